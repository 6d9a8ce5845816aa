import Foundation

/// Typed access to `JSONSerialization` values for the HF readers (config.json, safetensors headers, shard
/// indexes), so that their errors can say what they got.
///
/// JSONSerialization returns numbers and booleans as NSNumber, and on Linux `1 as? Bool` and `true as? Int`
/// both succeed; here a boolean is never a number and a number never a boolean (a boolean is the NSNumber
/// of objCType "c", which a Swift Bool bridges to as well).
///
/// Precision: on Linux (Swift 6.3) JSONSerialization reads about a quarter of 17-digit doubles a few ulps (up to ~10)
/// off (measured against Double(String); JSONDecoder is exact). Every float read here becomes a Float, and
/// there the results were identical (4 * 10^5 random numbers), so this costs nothing here. Integers are exact.
enum JSONValue {
    struct SyntaxError: Error, CustomStringConvertible {
        let description: String
    }

    /// Parses JSON text. Any top-level value is returned, so the caller can say what it got instead of an object.
    static func parse(_ data: Data) throws -> Any {
        do {
            return try JSONSerialization.jsonObject(with: data, options: .fragmentsAllowed)
        } catch {
            // The NSError's own text is generic ("The data is not in the correct format."); the reason and
            // position are in its debug description.
            throw SyntaxError(description: (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String ?? "\(error)")
        }
    }

    /// Pretty-printed JSON with sorted keys and a final newline (config.json, the shard index).
    static func prettyData(_ object: [String: Any]) throws -> Data {
        try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]) + Data("\n".utf8)
    }

    static func isBool(_ v: Any) -> Bool {
        (v as? NSNumber).map { String(cString: $0.objCType) == "c" } ?? false
    }

    static func bool(_ v: Any) -> Bool? {
        isBool(v) ? (v as? NSNumber)?.boolValue : nil
    }

    /// A number, not a boolean.
    static func number(_ v: Any) -> NSNumber? {
        isBool(v) ? nil : v as? NSNumber
    }

    static func isFloatingPoint(_ n: NSNumber) -> Bool {
        let t = String(cString: n.objCType)
        return t == "d" || t == "f"
    }

    static func double(_ v: Any) -> Double? {
        number(v)?.doubleValue
    }

    /// An integer; an exactly integral floating-point number is accepted too (e.g. `8.0`), but only below
    /// 2^53, where the double is still the number the text said.
    static func int(_ v: Any) -> Int? {
        guard let n = number(v) else { return nil }
        guard isFloatingPoint(n) else { return Int(exactly: n) }
        let d = n.doubleValue
        guard d.rounded() == d, abs(d) < 9.0e15 else { return nil }
        return Int(d)
    }

    static func typeName(_ v: Any) -> String {
        switch v {
        case is NSNull: return "null"
        case is String: return "string"
        case is [Any]: return "array"
        case is [String: Any]: return "object"
        default:
            if isBool(v) { return "bool" }
            guard let n = number(v) else { return "\(type(of: v))" }
            return isFloatingPoint(n) ? "number" : "integer"
        }
    }

    /// Compact JSON text of a value, for error messages.
    static func text(_ v: Any) -> String {
        guard let data = try? JSONSerialization.data(withJSONObject: v, options: [.fragmentsAllowed, .sortedKeys, .withoutEscapingSlashes]) else {
            return "\(v)"
        }
        return String(decoding: data, as: UTF8.self)
    }

    /// "string \"32\"", "integer 1", ... for error messages.
    static func describe(_ v: Any) -> String {
        "\(typeName(v)) \(text(v))"
    }
}
