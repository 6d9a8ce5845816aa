// Reader/writer for the `.npy` token files of `--dataloader.dataset tokens`: 1-D, C order,
// little-endian uint16 / int32 / int64 (what numpy.save writes for a token array).
// Format: "\x93NUMPY", major, minor, header length (u16 for v1, u32 for v2/v3), then an
// ASCII Python dict literal {'descr': '<u2', 'fortran_order': False, 'shape': (N,), }.

import Foundation

public enum NpyError: Error, CustomStringConvertible, Equatable {
    case unreadable(path: String, reason: String)
    case badHeader(path: String, reason: String)
    case unsupported(path: String, reason: String)
    case truncated(path: String, expectedBytes: Int, actualBytes: Int)
    case tokenOutOfRange(path: String, index: Int, value: Int64)

    public var description: String {
        switch self {
        case let .unreadable(path, reason): return "\(path): cannot read .npy file: \(reason)"
        case let .badHeader(path, reason): return "\(path): not a valid .npy file: \(reason)"
        case let .unsupported(path, reason): return "\(path): unsupported .npy token file: \(reason) (need a 1-D C-order array of <u2, <i4 or <i8)"
        case let .truncated(path, expected, actual):
            return "\(path): .npy data is \(actual) bytes but the header promises \(expected); the file is truncated or corrupt"
        case let .tokenOutOfRange(path, index, value):
            return "\(path): token \(index) has value \(value), outside 0..<2^31"
        }
    }
}

public enum NpyDType: String, CaseIterable {
    case uint16 = "<u2", int32 = "<i4", int64 = "<i8"
    public var itemSize: Int { switch self { case .uint16: 2; case .int32: 4; case .int64: 8 } }
}

public struct NpyHeader: Equatable {
    public var dtype: NpyDType
    public var count: Int
    /// Byte offset of the first element.
    public var dataOffset: Int
}

public enum Npy {
    /// Parse and validate the header of `bytes` (the whole file); `path` only names the file in errors.
    public static func parseHeader(_ bytes: [UInt8], path: String) throws -> NpyHeader {
        let magic: [UInt8] = [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59]  // \x93NUMPY
        guard bytes.count >= 10, Array(bytes[0..<6]) == magic else {
            throw NpyError.badHeader(path: path, reason: "missing the \\x93NUMPY magic")
        }
        let major = bytes[6]
        let headerLen: Int, headerStart: Int
        switch major {
        case 1:
            headerLen = Int(bytes[8]) | Int(bytes[9]) << 8
            headerStart = 10
        case 2, 3:
            guard bytes.count >= 12 else { throw NpyError.badHeader(path: path, reason: "file ends inside the header") }
            headerLen = Int(bytes[8]) | Int(bytes[9]) << 8 | Int(bytes[10]) << 16 | Int(bytes[11]) << 24
            headerStart = 12
        default:
            throw NpyError.badHeader(path: path, reason: "unknown format version \(major)")
        }
        guard headerStart + headerLen <= bytes.count else {
            throw NpyError.badHeader(path: path, reason: "header length \(headerLen) runs past the end of the file")
        }
        guard let header = String(bytes: bytes[headerStart..<(headerStart + headerLen)], encoding: major == 3 ? .utf8 : .isoLatin1) else {
            throw NpyError.badHeader(path: path, reason: "header is not text")
        }

        // The header is a Python dict literal; pull out the three keys we need.
        func value(of key: String) throws -> String {
            guard let k = header.range(of: "'\(key)'") else {
                throw NpyError.badHeader(path: path, reason: "header has no '\(key)' (header: \(header.trimmingCharacters(in: .whitespacesAndNewlines)))")
            }
            var rest = header[k.upperBound...].drop { $0 == " " }
            guard rest.first == ":" else { throw NpyError.badHeader(path: path, reason: "malformed '\(key)' entry") }
            rest = rest.dropFirst().drop { $0 == " " }
            if rest.first == "(" {
                guard let close = rest.firstIndex(of: ")") else { throw NpyError.badHeader(path: path, reason: "unterminated '\(key)' tuple") }
                return String(rest[...close])
            }
            if let q = rest.first, q == "'" || q == "\"" {
                let body = rest.dropFirst()
                guard let end = body.firstIndex(of: q) else { throw NpyError.badHeader(path: path, reason: "unterminated '\(key)' string") }
                return String(body[..<end])
            }
            let end = rest.firstIndex { $0 == "," || $0 == "}" } ?? rest.endIndex
            return rest[..<end].trimmingCharacters(in: .whitespaces)
        }

        let descr = try value(of: "descr")
        let fortran = try value(of: "fortran_order")
        let shape = try value(of: "shape")

        // '|u2' never occurs for multi-byte types; '>' (big-endian) is rejected by name.
        guard let dtype = NpyDType(rawValue: descr) else {
            throw NpyError.unsupported(path: path, reason: "dtype '\(descr)'")
        }
        guard fortran == "False" else {
            throw NpyError.unsupported(path: path, reason: "fortran_order is \(fortran)")
        }
        let dims = shape.dropFirst().dropLast().split(separator: ",")
            .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard dims.count == 1, let n = Int(dims[0]), n >= 0 else {
            throw NpyError.unsupported(path: path, reason: "shape \(shape) is not 1-D")
        }
        let dataOffset = headerStart + headerLen
        let expected = n * dtype.itemSize
        let actual = bytes.count - dataOffset
        guard actual == expected else {
            throw NpyError.truncated(path: path, expectedBytes: expected, actualBytes: actual)
        }
        return NpyHeader(dtype: dtype, count: n, dataOffset: dataOffset)
    }

    /// All tokens of a 1-D token file, widened to Int32 (token ids fit easily; int64 values
    /// outside 0..<2^31 are rejected rather than silently truncated).
    public static func readTokens(path: String) throws -> [Int32] {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw NpyError.unreadable(path: path, reason: error.localizedDescription)
        }
        return try decodeTokens([UInt8](data), path: path)
    }

    public static func decodeTokens(_ bytes: [UInt8], path: String) throws -> [Int32] {
        let h = try parseHeader(bytes, path: path)
        var out = [Int32](repeating: 0, count: h.count)
        bytes.withUnsafeBytes { raw in
            let base = raw.baseAddress! + h.dataOffset
            // loadUnaligned: the data offset is only guaranteed to be 16-aligned by numpy >= 1.x writers.
            switch h.dtype {
            case .uint16:
                for i in 0..<h.count { out[i] = Int32(UInt16(littleEndian: base.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
            case .int32:
                for i in 0..<h.count { out[i] = Int32(littleEndian: base.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self)) }
            case .int64:
                break
            }
        }
        if h.dtype == .int64 {
            try bytes.withUnsafeBytes { raw in
                let base = raw.baseAddress! + h.dataOffset
                for i in 0..<h.count {
                    let v = Int64(littleEndian: base.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self))
                    guard v >= 0, v <= Int64(Int32.max) else { throw NpyError.tokenOutOfRange(path: path, index: i, value: v) }
                    out[i] = Int32(v)
                }
            }
        }
        return out
    }

    /// Encode a 1-D token array as a version-1 .npy file (header padded so data starts 64-aligned, as numpy does).
    public static func encode(tokens: [Int32], dtype: NpyDType) -> [UInt8] {
        var header = "{'descr': '\(dtype.rawValue)', 'fortran_order': False, 'shape': (\(tokens.count),), }"
        let unpadded = 10 + header.utf8.count + 1
        header += String(repeating: " ", count: (64 - unpadded % 64) % 64) + "\n"
        var out: [UInt8] = [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, 1, 0]
        let hl = header.utf8.count
        out += [UInt8(hl & 0xff), UInt8(hl >> 8)]
        out += Array(header.utf8)
        out.reserveCapacity(out.count + tokens.count * dtype.itemSize)
        for t in tokens {
            switch dtype {
            case .uint16: withUnsafeBytes(of: UInt16(truncatingIfNeeded: t).littleEndian) { out += $0 }
            case .int32: withUnsafeBytes(of: t.littleEndian) { out += $0 }
            case .int64: withUnsafeBytes(of: Int64(t).littleEndian) { out += $0 }
            }
        }
        return out
    }

    public static func writeTokens(_ tokens: [Int32], dtype: NpyDType, path: String) throws {
        try Data(encode(tokens: tokens, dtype: dtype)).write(to: URL(fileURLWithPath: path))
    }
}
