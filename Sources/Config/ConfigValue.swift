// Scalar values a config field can hold, and how they read from the command line and
// write to JSON. One protocol keeps every field type parsed and printed the same way.

import Foundation

public protocol ConfigValue {
    /// Type name shown by `--help` and in error messages ("int", "float", "bool", "string", "a|b").
    static var configTypeName: String { get }
    /// Parse a command-line value; nil means "badly typed".
    init?(configString: String)
    /// Human-readable value for `--help`.
    var configDescription: String { get }
    /// JSON literal for DUMP/config.json.
    var configJSON: String { get }
}

extension Int: ConfigValue {
    public static var configTypeName: String { "int" }
    public init?(configString: String) { self.init(configString.trimmingCharacters(in: .whitespaces)) }
    public var configDescription: String { String(self) }
    public var configJSON: String { String(self) }
}

extension Double: ConfigValue {
    public static var configTypeName: String { "float" }
    public init?(configString: String) {
        guard let v = Double(configString.trimmingCharacters(in: .whitespaces)), !v.isNaN else { return nil }
        self = v
    }
    public var configDescription: String { "\(self)" }
    public var configJSON: String { jsonNumber(self) }
}

extension Float: ConfigValue {
    public static var configTypeName: String { "float" }
    public init?(configString: String) {
        guard let v = Float(configString.trimmingCharacters(in: .whitespaces)), !v.isNaN else { return nil }
        self = v
    }
    public var configDescription: String { "\(self)" }
    public var configJSON: String { isFinite ? "\(self)" : jsonNumber(Double(self)) }
}

extension Bool: ConfigValue {
    public static var configTypeName: String { "bool" }
    public init?(configString: String) {
        switch configString.trimmingCharacters(in: .whitespaces).lowercased() {
        case "true": self = true
        case "false": self = false
        default: return nil
        }
    }
    public var configDescription: String { self ? "true" : "false" }
    public var configJSON: String { configDescription }
}

extension String: ConfigValue {
    public static var configTypeName: String { "string" }
    public init?(configString: String) { self = configString }
    public var configDescription: String { self.isEmpty ? "\"\"" : self }
    public var configJSON: String { jsonString(self) }
}

/// String-backed enums (decay_type, dataset, ...): the type name lists the choices.
public protocol ConfigEnum: ConfigValue, RawRepresentable, CaseIterable where RawValue == String {}

extension ConfigEnum {
    public static var configTypeName: String { allCases.map { $0.rawValue }.joined(separator: "|") }
    public init?(configString: String) { self.init(rawValue: configString.trimmingCharacters(in: .whitespaces)) }
    public var configDescription: String { rawValue }
    public var configJSON: String { jsonString(rawValue) }
}

// MARK: - JSON literals (shared with the metrics writer)

/// JSON string literal with the escapes RFC 8259 requires.
public func jsonString(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if u.value < 0x20 {
                out += String(format: "\\u%04x", u.value)
            } else {
                out.unicodeScalars.append(u)
            }
        }
    }
    return out + "\""
}

/// JSON number literal; JSON has no NaN/Infinity, so those become null
/// (a reader then sees "no value" instead of failing to parse the whole line).
public func jsonNumber(_ v: Double) -> String {
    guard v.isFinite else { return "null" }
    return "\(v)"   // Swift prints the shortest round-tripping form: 1.0, 0.0003, 1e-08, 1e+20
}
