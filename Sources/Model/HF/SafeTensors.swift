import Foundation

// Reader and writer of the safetensors format (https://github.com/huggingface/safetensors):
//
//   [8 bytes: N, little-endian UInt64] [N bytes: JSON header, may be padded with spaces] [data]
//   header = { "__metadata__": {str: str}?,  name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ... }
//
// Offsets are relative to the start of the data section. The reader validates the whole header
// against the file size before it reads any tensor data, and then reads tensors by byte range.

/// Element types this reader converts to Float32.
public enum SafeTensorsDType: String, Sendable, CaseIterable, Equatable {
    case F32, F16, BF16

    public var byteSize: Int {
        switch self {
        case .F32: return 4
        case .F16, .BF16: return 2
        }
    }

    /// dtypes of the safetensors spec that this reader does not convert.
    public static let knownUnsupported: Set<String> = [
        "F64", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL",
        "F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64",
    ]
}

public struct SafeTensorsError: Error, CustomStringConvertible, Sendable {
    public enum Kind: String, Sendable {
        case io                    // cannot open / read / write the file
        case truncated             // file shorter than its 8-byte length prefix or its header says
        case headerLength          // header length zero, absurd, or past the end of the file
        case headerJSON            // header is not valid JSON or not an object
        case badEntry              // a tensor entry lacks dtype / shape / data_offsets or has wrong types
        case unsupportedDType      // a dtype this reader does not convert (or not a safetensors dtype)
        case sizeMismatch          // shape x dtype size != data_offsets span
        case offsetsOutOfRange     // data_offsets past the end of the data section or reversed
        case overlap               // two tensors share bytes
        case gap                   // bytes of the data section not covered by any tensor
        case missingTensor         // a requested tensor is not in the file
        case invalidTensor         // writer: a name or tensor that cannot be written
    }
    public let kind: Kind
    public let file: String
    public let tensor: String?
    public let reason: String

    public init(_ kind: Kind, file: String, tensor: String? = nil, _ reason: String) {
        self.kind = kind
        self.file = file
        self.tensor = tensor
        self.reason = reason
    }

    public var description: String {
        if let t = tensor { return "safetensors file \(file): tensor '\(t)': \(reason)" }
        return "safetensors file \(file): \(reason)"
    }
}

/// One tensor entry of a safetensors header. `dataOffsets` are relative to the data section.
public struct SafeTensorInfo: Sendable, Equatable {
    public let name: String
    public let dtype: SafeTensorsDType
    public let shape: [Int]
    public let dataOffsets: Range<Int>
    public var elementCount: Int { shape.reduce(1, *) }
    public var byteCount: Int { dataOffsets.count }
}

/// A validated safetensors header.
public struct SafeTensorsHeader: Sendable {
    /// N, the JSON header length in bytes (including padding).
    public let headerLength: Int
    public let metadata: [String: String]
    public let tensors: [String: SafeTensorInfo]
    /// Byte offset of the data section in the file (8 + N).
    public var dataStart: Int { 8 + headerLength }
    /// Tensor names, sorted.
    public var names: [String] { tensors.keys.sorted() }

    /// Largest header accepted (the reference implementation's limit).
    public static let maxHeaderLength = 100_000_000

    /// Reads N from the first 8 bytes; validates it against `fileSize`.
    public static func headerLength(prefix: [UInt8], fileSize: Int, file: String) throws -> Int {
        guard prefix.count >= 8, fileSize >= 8 else {
            throw SafeTensorsError(.truncated, file: file,
                                   "file is \(fileSize) bytes, shorter than the 8-byte header length prefix")
        }
        var n: UInt64 = 0
        for i in 0..<8 { n |= UInt64(prefix[i]) << (8 * UInt64(i)) }
        guard n > 0 else { throw SafeTensorsError(.headerLength, file: file, "header length is 0") }
        guard n <= UInt64(maxHeaderLength) else {
            throw SafeTensorsError(.headerLength, file: file,
                                   "header length \(n) exceeds the limit of \(maxHeaderLength) bytes (not a safetensors file?)")
        }
        guard n <= UInt64(fileSize - 8) else {
            throw SafeTensorsError(.headerLength, file: file,
                                   "header length \(n) runs past the end of the file (\(fileSize) bytes): truncated or not a safetensors file")
        }
        return Int(n)
    }

    /// Parses and validates the JSON header bytes. `dataLength` = file size - 8 - N.
    public static func parse(json: [UInt8], dataLength: Int, file: String) throws -> SafeTensorsHeader {
        let root: Any
        do {
            root = try JSONValue.parse(Data(json))
        } catch {
            throw SafeTensorsError(.headerJSON, file: file, "header is not valid JSON: \(error)")
        }
        guard let obj = root as? [String: Any] else {
            throw SafeTensorsError(.headerJSON, file: file, "header is a JSON \(JSONValue.typeName(root)), expected an object")
        }
        var metadata: [String: String] = [:]
        var tensors: [String: SafeTensorInfo] = [:]
        for (name, entry) in obj {
            if name == "__metadata__" {
                guard let m = entry as? [String: Any] else {
                    throw SafeTensorsError(.headerJSON, file: file, "__metadata__ must be an object of strings")
                }
                for (k, v) in m {
                    guard let s = v as? String else {
                        throw SafeTensorsError(.headerJSON, file: file, "__metadata__[\(k)] is a \(JSONValue.typeName(v)), expected a string")
                    }
                    metadata[k] = s
                }
                continue
            }
            guard let e = entry as? [String: Any] else {
                throw SafeTensorsError(.badEntry, file: file, tensor: name, "entry is a JSON \(JSONValue.typeName(entry)), expected an object")
            }
            guard let dt = e["dtype"] as? String else {
                throw SafeTensorsError(.badEntry, file: file, tensor: name, "missing or non-string \"dtype\"")
            }
            guard let dtype = SafeTensorsDType(rawValue: dt) else {
                if SafeTensorsDType.knownUnsupported.contains(dt) {
                    throw SafeTensorsError(.unsupportedDType, file: file, tensor: name,
                                           "dtype \(dt) is not supported (supported: F32, F16, BF16); convert the checkpoint to one of those")
                }
                throw SafeTensorsError(.unsupportedDType, file: file, tensor: name,
                                       "unknown dtype \"\(dt)\" (supported: F32, F16, BF16)")
            }
            guard let shapeJSON = e["shape"] as? [Any] else {
                throw SafeTensorsError(.badEntry, file: file, tensor: name, "missing or non-array \"shape\"")
            }
            var shape: [Int] = []
            var elements = 1
            for d in shapeJSON {
                guard let v = JSONValue.int(d), v >= 0 else {
                    throw SafeTensorsError(.badEntry, file: file, tensor: name, "shape \(JSONValue.text(shapeJSON)) has a non-integer or negative dimension")
                }
                shape.append(v)
                let (m, overflow) = elements.multipliedReportingOverflow(by: v)
                guard !overflow else { throw SafeTensorsError(.badEntry, file: file, tensor: name, "shape \(shape) overflows") }
                elements = m
            }
            guard let offs = e["data_offsets"] as? [Any], offs.count == 2,
                  let begin = JSONValue.int(offs[0]), let end = JSONValue.int(offs[1]) else {
                throw SafeTensorsError(.badEntry, file: file, tensor: name, "missing or malformed \"data_offsets\" (expected [begin, end])")
            }
            guard begin >= 0, begin <= end else {
                throw SafeTensorsError(.offsetsOutOfRange, file: file, tensor: name, "data_offsets [\(begin), \(end)] are negative or reversed")
            }
            guard end <= dataLength else {
                throw SafeTensorsError(.offsetsOutOfRange, file: file, tensor: name,
                                       "data_offsets [\(begin), \(end)] exceed the data section of \(dataLength) bytes (file truncated?)")
            }
            let (bytes, overflow) = elements.multipliedReportingOverflow(by: dtype.byteSize)
            guard !overflow, bytes == end - begin else {
                throw SafeTensorsError(.sizeMismatch, file: file, tensor: name,
                                       "shape \(shape) of \(dtype.rawValue) needs \(elements) x \(dtype.byteSize) bytes but data_offsets [\(begin), \(end)] span \(end - begin)")
            }
            tensors[name] = SafeTensorInfo(name: name, dtype: dtype, shape: shape, dataOffsets: begin..<end)
        }
        // Coverage: sorted by offset, the tensors must tile [0, dataLength) exactly.
        let ordered = tensors.values.sorted {
            ($0.dataOffsets.lowerBound, $0.dataOffsets.upperBound, $0.name) < ($1.dataOffsets.lowerBound, $1.dataOffsets.upperBound, $1.name)
        }
        var cursor = 0
        var previous: String? = nil
        for t in ordered {
            if t.dataOffsets.lowerBound < cursor {
                throw SafeTensorsError(.overlap, file: file, tensor: t.name,
                                       "data_offsets [\(t.dataOffsets.lowerBound), \(t.dataOffsets.upperBound)] overlap tensor '\(previous ?? "?")' (which ends at \(cursor))")
            }
            if t.dataOffsets.lowerBound > cursor {
                throw SafeTensorsError(.gap, file: file, tensor: t.name,
                                       "data_offsets begin at \(t.dataOffsets.lowerBound) but the previous tensor ends at \(cursor): \(t.dataOffsets.lowerBound - cursor) bytes are not covered")
            }
            if !t.dataOffsets.isEmpty {
                cursor = t.dataOffsets.upperBound
                previous = t.name
            }
        }
        if cursor != dataLength {
            throw SafeTensorsError(.gap, file: file,
                                   "the tensors cover \(cursor) bytes but the data section has \(dataLength): \(dataLength - cursor) trailing bytes are not covered")
        }
        return SafeTensorsHeader(headerLength: json.count, metadata: metadata, tensors: tensors)
    }

    public func info(_ name: String, file: String) throws -> SafeTensorInfo {
        guard let t = tensors[name] else {
            throw SafeTensorsError(.missingTensor, file: file, tensor: name, "not in this file (it has \(tensors.count) tensors)")
        }
        return t
    }
}

/// File-backed reader: validates the header at open, then reads tensors by byte range.
public final class SafeTensorsReader {
    public let path: String
    public let fileSize: Int
    public let header: SafeTensorsHeader

    public var names: [String] { header.names }
    public var metadata: [String: String] { header.metadata }

    public init(path: String) throws {
        self.path = path
        guard let fh = FileHandle(forReadingAtPath: path) else {
            throw SafeTensorsError(.io, file: path, "cannot open for reading (missing file or no permission)")
        }
        defer { try? fh.close() }
        let size: Int
        do {
            size = Int(try fh.seekToEnd())
            try fh.seek(toOffset: 0)
        } catch {
            throw SafeTensorsError(.io, file: path, "cannot determine the file size: \(error)")
        }
        fileSize = size
        let prefix = try SafeTensorsReader.read(fh, offset: 0, count: min(8, size), file: path)
        let n = try SafeTensorsHeader.headerLength(prefix: prefix, fileSize: size, file: path)
        let json = try SafeTensorsReader.read(fh, offset: 8, count: n, file: path)
        header = try SafeTensorsHeader.parse(json: json, dataLength: size - 8 - n, file: path)
    }

    static func read(_ fh: FileHandle, offset: Int, count: Int, file: String) throws -> [UInt8] {
        if count == 0 { return [] }
        do {
            try fh.seek(toOffset: UInt64(offset))
            var out = [UInt8]()
            out.reserveCapacity(count)
            while out.count < count {
                guard let chunk = try fh.read(upToCount: count - out.count), !chunk.isEmpty else { break }
                out.append(contentsOf: chunk)
            }
            guard out.count == count else {
                throw SafeTensorsError(.truncated, file: file, "expected \(count) bytes at offset \(offset), got \(out.count) (file changed or truncated?)")
            }
            return out
        } catch let e as SafeTensorsError {
            throw e
        } catch {
            throw SafeTensorsError(.io, file: file, "read of \(count) bytes at offset \(offset) failed: \(error)")
        }
    }

    public func info(_ name: String) throws -> SafeTensorInfo {
        try header.info(name, file: path)
    }

    /// Raw bytes of one tensor, read by its byte range only.
    public func rawBytes(_ name: String) throws -> [UInt8] {
        let t = try info(name)
        guard let fh = FileHandle(forReadingAtPath: path) else {
            throw SafeTensorsError(.io, file: path, tensor: name, "cannot reopen the file for reading")
        }
        defer { try? fh.close() }
        return try SafeTensorsReader.read(fh, offset: header.dataStart + t.dataOffsets.lowerBound, count: t.byteCount, file: path)
    }

    /// Elements `elements` (flat, row-major) of tensor `name`, converted to Float32 into out[0..<elements.count]; reads
    /// just their byte range (positioned reads: safe from several threads).
    public func read(_ name: String, elements: Range<Int>, into out: UnsafeMutablePointer<Float>) throws {
        let t = try info(name)
        guard elements.lowerBound >= 0, elements.upperBound <= t.elementCount else {
            throw SafeTensorsError(.io, file: path, tensor: name, "elements \(elements) outside the tensor's \(t.elementCount)")
        }
        if elements.isEmpty { return }
        let es = t.dtype.byteSize
        let offset = header.dataStart + t.dataOffsets.lowerBound + elements.lowerBound * es, count = elements.count * es
        guard let fh = FileHandle(forReadingAtPath: path) else {
            throw SafeTensorsError(.io, file: path, tensor: name, "cannot reopen the file for reading")
        }
        defer { try? fh.close() }
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = bytes.withUnsafeMutableBytes { pread(fh.fileDescriptor, $0.baseAddress! + done, count - done, off_t(offset + done)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                throw SafeTensorsError(n == 0 ? .truncated : .io, file: path, tensor: name,
                                       "read of \(count) bytes at offset \(offset) stopped after \(done)\(n < 0 ? ": " + String(cString: strerror(errno)) : " (file changed or truncated?)")")
            }
            done += n
        }
        let values = SafeTensors.decodeValues(bytes, dtype: t.dtype)
        values.withUnsafeBufferPointer { out.update(from: $0.baseAddress!, count: elements.count) }
    }

    /// One tensor converted to Float32.
    public func tensor(_ name: String) throws -> HostTensor {
        let t = try info(name)
        let bytes = try rawBytes(name)
        return HostTensor(shape: t.shape, values: SafeTensors.decodeValues(bytes, dtype: t.dtype))
    }

    /// Several tensors (all when `names` is nil), each read by its own byte range.
    public func tensors(_ names: [String]? = nil) throws -> StateDict {
        var out: StateDict = [:]
        for n in names ?? self.names { out[n] = try tensor(n) }
        return out
    }
}

/// In-memory encode / decode and whole-file helpers.
public enum SafeTensors {
    /// Decodes a whole safetensors buffer (validated like `SafeTensorsReader`).
    public static func decode(_ bytes: [UInt8], file: String = "<memory>") throws -> (metadata: [String: String], tensors: StateDict) {
        let n = try SafeTensorsHeader.headerLength(prefix: Array(bytes.prefix(8)), fileSize: bytes.count, file: file)
        let header = try SafeTensorsHeader.parse(json: Array(bytes[8..<(8 + n)]), dataLength: bytes.count - 8 - n, file: file)
        var out: StateDict = [:]
        for (name, t) in header.tensors {
            let lo = header.dataStart + t.dataOffsets.lowerBound
            let values = bytes.withUnsafeBytes { raw in
                decodeValues(UnsafeRawBufferPointer(rebasing: raw[lo..<(lo + t.byteCount)]), dtype: t.dtype)
            }
            out[name] = HostTensor(shape: t.shape, values: values)
        }
        return (header.metadata, out)
    }

    /// Reads a whole file.
    public static func read(path: String) throws -> StateDict {
        try SafeTensorsReader(path: path).tensors()
    }

    /// Serializes tensors: names sorted, data in name order, header padded with spaces so that
    /// the data section starts at a multiple of 8. `dtype` F32 (exact) or BF16 (round to nearest even).
    public static func encode(_ tensors: StateDict, metadata: [String: String] = [:],
                              dtype: SafeTensorsDType = .F32, file: String = "<memory>") throws -> [UInt8] {
        let (headerBytes, names) = try header(tensors, metadata: metadata, dtype: dtype, file: file)
        var out = [UInt8]()
        out.reserveCapacity(headerBytes.count + tensors.values.reduce(0) { $0 + $1.values.count * dtype.byteSize })
        out.append(contentsOf: headerBytes)
        for name in names { appendValues(tensors[name]!.values, dtype: dtype, to: &out) }
        return out
    }

    /// Writes tensors to `path` (through a temporary file renamed into place, so a crash never
    /// leaves a half-written file under the final name).
    public static func write(_ tensors: StateDict, to path: String, metadata: [String: String] = [:],
                             dtype: SafeTensorsDType = .F32) throws {
        let (headerBytes, names) = try header(tensors, metadata: metadata, dtype: dtype, file: path)
        let tmp = path + ".tmp-\(ProcessInfo.processInfo.processIdentifier)"
        let fm = FileManager.default
        _ = fm.createFile(atPath: tmp, contents: nil)
        guard let fh = FileHandle(forWritingAtPath: tmp) else {
            throw SafeTensorsError(.io, file: path, "cannot create \(tmp) for writing")
        }
        do {
            try fh.write(contentsOf: Data(headerBytes))
            for name in names {
                var buf = [UInt8]()
                appendValues(tensors[name]!.values, dtype: dtype, to: &buf)
                try fh.write(contentsOf: Data(buf))
            }
            try fh.synchronize()
            try fh.close()
            // rename(2) replaces an existing file atomically: readers see the old or the new file, never none.
            guard rename(tmp, path) == 0 else {
                throw SafeTensorsError(.io, file: path, "cannot rename \(tmp) into place: \(String(cString: strerror(errno)))")
            }
        } catch {
            try? fh.close()
            try? fm.removeItem(atPath: tmp)
            throw SafeTensorsError(.io, file: path, "write failed: \(error)")
        }
    }

    /// Length prefix + padded JSON header, and the tensor names in data order.
    static func header(_ tensors: StateDict, metadata: [String: String], dtype: SafeTensorsDType,
                       file: String) throws -> ([UInt8], [String]) {
        guard dtype == .F32 || dtype == .BF16 else {
            throw SafeTensorsError(.unsupportedDType, file: file, "the writer writes F32 or BF16, not \(dtype.rawValue)")
        }
        let names = tensors.keys.sorted()
        var entries: [String: Any] = [:]
        if !metadata.isEmpty { entries["__metadata__"] = metadata }
        var offset = 0
        for name in names {
            guard !name.isEmpty, name != "__metadata__" else {
                throw SafeTensorsError(.invalidTensor, file: file, tensor: name, "invalid tensor name")
            }
            let t = tensors[name]!
            guard t.shape.allSatisfy({ $0 >= 0 }), t.shape.reduce(1, *) == t.values.count else {
                throw SafeTensorsError(.invalidTensor, file: file, tensor: name, "shape \(t.shape) does not match \(t.values.count) values")
            }
            let end = offset + t.values.count * dtype.byteSize
            entries[name] = ["dtype": dtype.rawValue, "shape": t.shape, "data_offsets": [offset, end]] as [String: Any]
            offset = end
        }
        // Sorted keys make the bytes reproducible. Foundation sorts them its own way ("layers.2" before
        // "layers.10"), not in data order; readers order tensors by data_offsets, not by key.
        var body = [UInt8](try JSONSerialization.data(withJSONObject: entries, options: [.sortedKeys, .withoutEscapingSlashes]))
        while (8 + body.count) % 8 != 0 { body.append(0x20) }
        var out = [UInt8]()
        out.reserveCapacity(8 + body.count)
        let n = UInt64(body.count)
        for i in 0..<8 { out.append(UInt8(truncatingIfNeeded: n >> (8 * UInt64(i)))) }
        out.append(contentsOf: body)
        return (out, names)
    }

    static func appendValues(_ values: [Float], dtype: SafeTensorsDType, to out: inout [UInt8]) {
        switch dtype {
        case .F32:
            out.reserveCapacity(out.count + values.count * 4)
            for v in values {
                let b = v.bitPattern.littleEndian
                withUnsafeBytes(of: b) { out.append(contentsOf: $0) }
            }
        case .BF16:
            out.reserveCapacity(out.count + values.count * 2)
            for v in values {
                let h = floatToBF16(v).littleEndian
                withUnsafeBytes(of: h) { out.append(contentsOf: $0) }
            }
        case .F16:
            preconditionFailure("F16 writing is not supported")
        }
    }

    // MARK: element conversion

    public static func decodeValues(_ bytes: [UInt8], dtype: SafeTensorsDType) -> [Float] {
        bytes.withUnsafeBytes { decodeValues($0, dtype: dtype) }
    }

    public static func decodeValues(_ raw: UnsafeRawBufferPointer, dtype: SafeTensorsDType) -> [Float] {
        let count = raw.count / dtype.byteSize
        return [Float](unsafeUninitializedCapacity: count) { buf, initialized in
            switch dtype {
            case .F32:
                for i in 0..<count {
                    buf[i] = Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
                }
            case .BF16:
                for i in 0..<count {
                    let h = UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
                    buf[i] = Float(bitPattern: UInt32(h) << 16)
                }
            case .F16:
                for i in 0..<count {
                    buf[i] = halfToFloat(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
                }
            }
            initialized = count
        }
    }

    /// IEEE 754 binary16 → binary32 (exact).
    public static func halfToFloat(_ h: UInt16) -> Float {
        let sign = UInt32(h >> 15) << 31
        let exp = UInt32((h >> 10) & 0x1F)
        let mant = UInt32(h & 0x3FF)
        if exp == 0 {
            if mant == 0 { return Float(bitPattern: sign) }
            let v = Float(sign: .plus, exponent: -24, significand: Float(mant))  // subnormal: mant * 2^-24
            return sign != 0 ? -v : v
        }
        if exp == 0x1F { return Float(bitPattern: sign | 0x7F80_0000 | (mant << 13)) }
        return Float(bitPattern: sign | ((exp + 112) << 23) | (mant << 13))
    }

    /// binary32 → bfloat16, round to nearest even; NaN stays NaN.
    public static func floatToBF16(_ f: Float) -> UInt16 {
        let bits = f.bitPattern
        if f.isNaN { return UInt16(bits >> 16) | 0x0040 }
        let rounding = 0x7FFF + ((bits >> 16) & 1)
        return UInt16((bits &+ rounding) >> 16)
    }
}
