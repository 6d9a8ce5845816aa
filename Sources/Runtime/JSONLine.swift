import Foundation

/// One JSON object on one line, keys sorted (metrics.jsonl rows, the benchmarks' machine-read lines). Values are
/// Int, Double, String, Bool, NSNull or arrays of Int / Double; a non-finite Double becomes null (JSON has no NaN). Through JSONEncoder: a
/// metrics row of 26 numbers took 31 µs here, JSONSerialization with sorted keys 623 µs (every step, on rank 0).
public func jsonLine(_ object: [String: Any]) -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    // Only the scalar types above reach here: encoding cannot fail.
    return String(decoding: try! encoder.encode(object.mapValues(JSONScalar.init)), as: UTF8.self)
}

private struct JSONScalar: Encodable {
    let value: Any

    func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch value {
        case let v as Int: try c.encode(v)
        case let v as Double: if v.isFinite { try c.encode(v) } else { try c.encodeNil() }
        case let v as String: try c.encode(v)
        case let v as Bool: try c.encode(v)
        case is NSNull: try c.encodeNil()
        case let v as [Int]: try c.encode(v)
        case let v as [Double]: try c.encode(v.map(JSONScalar.init))
        default: preconditionFailure("jsonLine: \(type(of: value)) is not a JSON scalar")
        }
    }
}

/// `x` rounded to `places` decimals, for numbers printed in JSON lines.
public func rounded(_ x: Double, places: Int) -> Double {
    let scale = pow(10, Double(places))
    return (x * scale).rounded() / scale
}
