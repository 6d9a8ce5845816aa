import Foundation

/// One JSON object on one line, keys sorted (metrics.jsonl rows, the benchmarks' machine-read lines). Values are what
/// JSONSerialization takes; a non-finite Double becomes null (JSON has no NaN).
public func jsonLine(_ object: [String: Any]) -> String {
    let clean = object.mapValues { v -> Any in
        if let d = v as? Double, !d.isFinite { return NSNull() }
        return v
    }
    // Only strings, numbers, booleans, null and arrays of them reach here: serializing cannot fail.
    let data = try! JSONSerialization.data(withJSONObject: clean, options: [.sortedKeys, .withoutEscapingSlashes])
    return String(decoding: data, as: UTF8.self)
}

/// `x` rounded to `places` decimals, for numbers printed in JSON lines.
public func rounded(_ x: Double, places: Int) -> Double {
    let scale = pow(10, Double(places))
    return (x * scale).rounded() / scale
}
