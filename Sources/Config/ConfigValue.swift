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
    /// The value for DUMP/config.json, as JSONSerialization takes it.
    var configJSON: Any { get }
}

extension Int: ConfigValue {
    public static var configTypeName: String { "int" }
    public init?(configString: String) { self.init(configString.trimmingCharacters(in: .whitespaces)) }
    public var configDescription: String { String(self) }
    public var configJSON: Any { self }
}

extension Double: ConfigValue {
    public static var configTypeName: String { "float" }
    public init?(configString: String) {
        guard let v = Double(configString.trimmingCharacters(in: .whitespaces)), !v.isNaN else { return nil }
        self = v
    }
    public var configDescription: String { "\(self)" }
    public var configJSON: Any { isFinite ? self : NSNull() }   // JSON has no infinity
}

extension Float: ConfigValue {
    public static var configTypeName: String { "float" }
    public init?(configString: String) {
        guard let v = Float(configString.trimmingCharacters(in: .whitespaces)), !v.isNaN else { return nil }
        self = v
    }
    public var configDescription: String { "\(self)" }
    /// Through the shortest decimal form, so 1e-06 stays 1e-06 instead of becoming 9.999999974752427e-07.
    public var configJSON: Any { isFinite ? Double("\(self)")! : NSNull() }
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
    public var configJSON: Any { self }
}

extension String: ConfigValue {
    public static var configTypeName: String { "string" }
    public init?(configString: String) { self = configString }
    public var configDescription: String { self.isEmpty ? "\"\"" : self }
    public var configJSON: Any { self }
}

/// String-backed enums (decay_type, dataset, ...): the type name lists the choices.
public protocol ConfigEnum: ConfigValue, RawRepresentable, CaseIterable where RawValue == String {}

extension ConfigEnum {
    public static var configTypeName: String { allCases.map { $0.rawValue }.joined(separator: "|") }
    public init?(configString: String) { self.init(rawValue: configString.trimmingCharacters(in: .whitespaces)) }
    public var configDescription: String { rawValue }
    public var configJSON: Any { rawValue }
}
