// Document datasets (`--dataloader.dataset jsonl | text`), streamed: torchtitan's HF-datasets loaders pack documents,
// each tokenized with the tokenizer's BOS and EOS around it, into one token stream cut into L+1-token windows; so do we,
// reading the file forward in chunks so that a file larger than memory works, and looping over it (epochs) as
// torchtitan's infinite loaders do. Where window w starts (the document's byte offset and line, the token within the
// document) is a global position: a checkpoint keeps it and any topology resumes from it.

import Foundation

public enum DocumentFormat: Sendable {
    /// One JSON object per line, its text under `field` (empty lines skipped).
    case jsonl(field: String)
    /// One document per line (HF datasets' "text" builder; empty lines skipped).
    case text
}

/// Where a window starts in a document file: what a checkpoint saves and a loader resumes from.
public struct DocumentPosition: Codable, Equatable, Sendable {
    /// The global index of the window that starts here.
    public var window: Int
    /// Passes over the file completed before this one.
    public var epoch: Int
    /// Byte offset and 1-based line number of the document the window's first token belongs to.
    public var offset: Int
    public var line: Int
    /// Index of that token within the document's tokens (BOS first).
    public var token: Int

    public static let start = DocumentPosition(window: 0, epoch: 0, offset: 0, line: 1, token: 0)
}

public struct DocumentError: Error, CustomStringConvertible {
    public let path: String
    public let line: Int?
    public let reason: String
    public var description: String { line.map { "\(path):\($0): \(reason)" } ?? "\(path): \(reason)" }
}

/// Lines of a file with their byte offsets and line numbers, read forward in 1 MiB chunks.
final class LineReader {
    let path: String
    private let handle: FileHandle
    private var buffer = [UInt8]()
    private var start = 0        // first unread byte in buffer
    private var bufferOffset = 0 // file offset of buffer[0]
    private var eof = false
    private(set) var nextLine = 1

    init(path: String) throws {
        self.path = path
        guard let h = FileHandle(forReadingAtPath: path) else {
            throw DocumentError(path: path, line: nil, reason: "cannot open for reading")
        }
        handle = h
    }
    deinit { try? handle.close() }

    /// Continues at `offset`, which starts line `line`.
    func seek(offset: Int, line: Int) throws {
        do { try handle.seek(toOffset: UInt64(offset)) } catch {
            throw DocumentError(path: path, line: line, reason: "cannot seek to byte \(offset): \(error)")
        }
        buffer.removeAll(keepingCapacity: true)
        start = 0
        bufferOffset = offset
        eof = false
        nextLine = line
    }

    /// The next line (without its newline), its byte offset and line number; nil at the end of the file.
    func next() throws -> (bytes: ArraySlice<UInt8>, offset: Int, line: Int)? {
        while true {
            if let nl = buffer[start...].firstIndex(of: 10) {
                let line = (buffer[start..<nl], bufferOffset + start, nextLine)
                start = nl + 1
                nextLine += 1
                return line
            }
            if eof {
                guard start < buffer.count else { return nil }
                let line = (buffer[start...], bufferOffset + start, nextLine)
                start = buffer.count
                nextLine += 1
                return line
            }
            // Keep the unfinished line, read the next chunk after it.
            buffer.removeFirst(start)
            bufferOffset += start
            start = 0
            let chunk: Data?
            do { chunk = try handle.read(upToCount: 1 << 20) } catch {
                throw DocumentError(path: path, line: nextLine, reason: "read failed: \(error)")
            }
            if let chunk, !chunk.isEmpty { buffer.append(contentsOf: chunk) } else { eof = true }
        }
    }
}

/// The packed token stream of a document file, served as consecutive L+1-token windows from a `DocumentPosition`.
public final class PackedDocuments {
    public let path: String
    let format: DocumentFormat
    let tokenizer: Tokenizer
    public let windowTokens: Int
    let vocabSize: Int
    private let reader: LineReader
    /// The current document's tokens and the next one to take.
    private var doc: [Int32] = []
    private var docToken = 0
    private var docOffset = 0, docLine = 1
    /// Position of the next window.
    public private(set) var position: DocumentPosition

    public init(path: String, format: DocumentFormat, tokenizer: Tokenizer, windowTokens: Int, vocabSize: Int,
                from position: DocumentPosition = .start) throws {
        self.path = path
        self.format = format
        self.tokenizer = tokenizer
        self.windowTokens = windowTokens
        self.vocabSize = vocabSize
        self.position = position
        reader = try LineReader(path: path)
        try reader.seek(offset: position.offset, line: position.line)
        if position.token > 0 || position.offset > 0 || position.epoch > 0 {
            guard try loadDocument() else {
                throw DocumentError(path: path, line: position.line, reason: "no document at byte \(position.offset) to resume from (was the file changed?)")
            }
            guard position.token < doc.count else {
                throw DocumentError(path: path, line: position.line,
                                    reason: "the document there has \(doc.count) tokens, the checkpoint resumes at token \(position.token) (was the file or the tokenizer changed?)")
            }
            docToken = position.token
        }
    }

    /// The next window (L+1 tokens), advancing the position.
    public func next() throws -> [Int32] {
        var out = [Int32]()
        out.reserveCapacity(windowTokens)
        while out.count < windowTokens {
            if docToken == doc.count {
                if try !loadDocument() {
                    // End of the file: the next epoch starts over.
                    position.epoch += 1
                    try reader.seek(offset: 0, line: 1)
                    guard try loadDocument() else { throw DocumentError(path: path, line: nil, reason: "holds no document") }
                }
            }
            if out.isEmpty { position.offset = docOffset; position.line = docLine; position.token = docToken }
            let n = min(windowTokens - out.count, doc.count - docToken)
            out.append(contentsOf: doc[docToken..<(docToken + n)])
            docToken += n
        }
        position.window += 1
        // Where the next window starts: the rest of this document, else the next one's start.
        if docToken < doc.count { position.offset = docOffset; position.line = docLine; position.token = docToken }
        else { position.offset = -1 }   // resolved when the next window is cut
        return out
    }

    /// Position of the next window, resolved to the document it starts in (reads ahead to it when needed).
    public func nextPosition() throws -> DocumentPosition {
        if position.offset >= 0 { return position }
        if try !loadDocument() {
            position.epoch += 1
            try reader.seek(offset: 0, line: 1)
            guard try loadDocument() else { throw DocumentError(path: path, line: nil, reason: "holds no document") }
        }
        position.offset = docOffset; position.line = docLine; position.token = 0
        return position
    }

    /// Reads the next non-empty document into `doc`; false at the end of the file.
    private func loadDocument() throws -> Bool {
        while let (bytes, offset, line) = try reader.next() {
            guard let text = try documentText(bytes, line: line) else { continue }
            var tokens = [Int32]()
            if let bos = tokenizer.bosID { tokens.append(bos) }
            tokens += tokenizer.encode(text)
            if let eos = tokenizer.eosID { tokens.append(eos) }
            if let bad = tokens.first(where: { $0 < 0 || Int($0) >= vocabSize }) {
                throw DocumentError(path: path, line: line, reason: "token \(bad) is not < model.vocab_size \(vocabSize); use a tokenizer and model that match")
            }
            doc = tokens
            docToken = 0
            docOffset = offset
            docLine = line
            return true
        }
        return false
    }

    /// The text of one line's document, nil for an empty line.
    private func documentText(_ bytes: ArraySlice<UInt8>, line: Int) throws -> String? {
        var bytes = bytes
        if bytes.last == 13 { bytes = bytes.dropLast() }   // CRLF files
        if bytes.allSatisfy({ $0 == 32 || $0 == 9 }) { return nil }
        switch format {
        case .text:
            guard let s = String(validating: bytes, as: UTF8.self) else {
                throw DocumentError(path: path, line: line, reason: "is not valid UTF-8")
            }
            return s
        case let .jsonl(field):
            let object: Any
            do { object = try JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed]) } catch {
                throw DocumentError(path: path, line: line, reason: "is not valid JSON: \((error as NSError).userInfo[NSDebugDescriptionErrorKey] ?? error)")
            }
            guard let dict = object as? [String: Any] else {
                throw DocumentError(path: path, line: line, reason: "is not a JSON object (one document per line)")
            }
            guard let value = dict[field] else {
                throw DocumentError(path: path, line: line, reason: "has no field \"\(field)\" (dataloader.text_field)")
            }
            guard let s = value as? String else {
                throw DocumentError(path: path, line: line, reason: "field \"\(field)\" is not a string")
            }
            return s
        }
    }
}
