// The generic mechanism: a field table (dotted key, type, doc, getter/setter through a key
// path) over any root type. Command-line overrides, --help, error suggestions and the JSON
// dump are all driven by the table, so adding a field is one line and it is automatically
// overridable, documented and dumped.

import Foundation

public enum ConfigError: Error, CustomStringConvertible, Equatable {
    case unknownKey(key: String, suggestion: String?)
    case badValue(key: String, value: String, expected: String)
    case missingValue(key: String, expected: String)
    case unexpectedArgument(String)
    case unknownConfig(module: String, config: String, suggestion: String?, available: [String])
    case invalid(key: String, reason: String)

    public var description: String {
        switch self {
        case let .unknownKey(key, suggestion):
            var s = "unknown config key '--\(key)'"
            if let suggestion { s += "; did you mean '--\(suggestion)'?" }
            return s + " (run with --help to list every key)"
        case let .badValue(key, value, expected):
            return "config key '--\(key)': '\(value)' is not a valid \(expected)"
        case let .missingValue(key, expected):
            return "config key '--\(key)' needs a value of type \(expected)"
        case let .unexpectedArgument(arg):
            return "unexpected argument '\(arg)': config overrides are written '--section.field value' or '--section.field=value'"
        case let .unknownConfig(module, config, suggestion, available):
            var s = "no registered config '--module \(module) --config \(config)'"
            if let suggestion { s += "; did you mean '\(suggestion)'?" }
            return s + " (available: \(available.joined(separator: ", ")))"
        case let .invalid(key, reason):
            return "config key '--\(key)': \(reason)"
        }
    }
}

/// One overridable field of `Root`.
public struct ConfigField<Root> {
    /// Dotted key as written on the command line without the leading "--": "training.steps".
    public let key: String
    public let typeName: String
    public let doc: String
    /// Booleans may be given bare (`--checkpoint.enable` means true).
    public let isBool: Bool
    let describe: (Root) -> String
    let toJSON: (Root) -> Any
    /// Returns false when the string does not parse as this field's type.
    let assign: (inout Root, String) -> Bool
    /// Type check without a root, so the command line is checked before any config is built.
    let accepts: (String) -> Bool

    public init<T: ConfigValue>(_ key: String, _ path: WritableKeyPath<Root, T>, _ doc: String) {
        self.key = key
        self.typeName = T.configTypeName
        self.doc = doc
        self.isBool = T.self == Bool.self
        self.describe = { $0[keyPath: path].configDescription }
        self.toJSON = { $0[keyPath: path].configJSON }
        self.assign = { root, s in
            guard let v = T(configString: s) else { return false }
            root[keyPath: path] = v
            return true
        }
        self.accepts = { T(configString: $0) != nil }
    }

    /// Optional field: "none" (or "null") clears it.
    public init<T: ConfigValue>(_ key: String, _ path: WritableKeyPath<Root, T?>, _ doc: String) {
        self.key = key
        self.typeName = T.configTypeName + "?"
        self.doc = doc
        self.isBool = false
        self.describe = { $0[keyPath: path]?.configDescription ?? "none" }
        self.toJSON = { $0[keyPath: path]?.configJSON ?? NSNull() }
        self.assign = { root, s in
            let t = s.trimmingCharacters(in: .whitespaces).lowercased()
            if t == "none" || t == "null" { root[keyPath: path] = nil; return true }
            guard let v = T(configString: s) else { return false }
            root[keyPath: path] = v
            return true
        }
        self.accepts = { s in
            let t = s.trimmingCharacters(in: .whitespaces).lowercased()
            return t == "none" || t == "null" || T(configString: s) != nil
        }
    }

    init(key: String, typeName: String, doc: String, isBool: Bool,
         describe: @escaping (Root) -> String, toJSON: @escaping (Root) -> Any,
         assign: @escaping (inout Root, String) -> Bool, accepts: @escaping (String) -> Bool) {
        self.key = key; self.typeName = typeName; self.doc = doc; self.isBool = isBool
        self.describe = describe; self.toJSON = toJSON; self.assign = assign; self.accepts = accepts
    }

    /// The same field seen from an enclosing root (e.g. JobConfig fields inside a bigger config).
    public func lifted<Outer>(_ path: WritableKeyPath<Outer, Root>, keyPrefix: String = "") -> ConfigField<Outer> {
        let describe = self.describe, toJSON = self.toJSON, assign = self.assign, accepts = self.accepts
        return ConfigField<Outer>(
            key: keyPrefix + key, typeName: typeName, doc: doc, isBool: isBool,
            describe: { describe($0[keyPath: path]) },
            toJSON: { toJSON($0[keyPath: path]) },
            assign: { outer, s in assign(&outer[keyPath: path], s) },
            accepts: accepts)
    }

    public func value(in root: Root) -> String { describe(root) }
}

/// One `--key value` pair from the command line, in order of appearance.
public struct ConfigAssignment: Equatable {
    public var key: String
    public var value: String
    public init(key: String, value: String) { self.key = key; self.value = value }
}

/// The command line split into the registry selection and the field overrides.
public struct ConfigCommandLine: Equatable {
    public var module: String?
    public var config: String?
    public var help: Bool = false
    public var assignments: [ConfigAssignment] = []
}

public struct ConfigSchema<Root> {
    public var fields: [ConfigField<Root>]
    /// Optional one-line description per section (all key components but the last), shown by --help.
    public var sectionDocs: [String: String]
    /// Each section's own checks (`ConfigSection.validate`), run by `validate(_:)`.
    var validators: [(Root) throws -> Void] = []

    public init(_ fields: [ConfigField<Root>], sectionDocs: [String: String] = [:]) {
        self.fields = fields
        self.sectionDocs = sectionDocs
        var seen = Set<String>()
        for f in fields { precondition(seen.insert(f.key).inserted, "ConfigSchema: duplicate key \(f.key)") }
    }

    /// The schema of a config made of sections (torchtitan's JobConfig): each section's fields under its name, in
    /// the order given (the order of --help).
    public init(sections: [ConfigSchema<Root>]) {
        self.init(sections.flatMap(\.fields), sectionDocs: sections.reduce(into: [:]) { $0.merge($1.sectionDocs) { a, _ in a } })
        validators = sections.flatMap(\.validators)
    }

    /// Section `name` of the root, held at `path`: its fields keyed "name.field", its docs and checks.
    public static func section<S: ConfigSection>(_ name: String, _ path: WritableKeyPath<Root, S>) -> ConfigSchema<Root> {
        var docs = [name: S.doc]
        for (k, v) in S.subsectionDocs { docs[name + "." + k] = v }
        var schema = ConfigSchema(S.fields.map { $0.lifted(path, keyPrefix: name + ".") }, sectionDocs: docs)
        schema.validators = [{ root in
            do { try root[keyPath: path].validate() } catch let ConfigError.invalid(key, reason) {
                throw ConfigError.invalid(key: name + "." + key, reason: reason)
            }
        }]
        return schema
    }

    /// Runs every section's own checks; errors name the full key.
    public func validate(_ root: Root) throws {
        for v in validators { try v(root) }
    }

    public func field(_ key: String) -> ConfigField<Root>? { fields.first { $0.key == key } }

    // MARK: setting values

    public func set(_ key: String, _ value: String, in root: inout Root) throws {
        guard let f = field(key) else { throw ConfigError.unknownKey(key: key, suggestion: suggest(key)) }
        guard f.assign(&root, value) else { throw ConfigError.badValue(key: key, value: value, expected: f.typeName) }
    }

    public func get(_ key: String, in root: Root) throws -> String {
        guard let f = field(key) else { throw ConfigError.unknownKey(key: key, suggestion: suggest(key)) }
        return f.describe(root)
    }

    public func apply(_ assignments: [ConfigAssignment], to root: inout Root) throws {
        for a in assignments { try set(a.key, a.value, in: &root) }
    }

    // MARK: command line

    /// Split `args` into `--module`, `--config`, `--help` and field assignments.
    /// Accepted forms: `--key value`, `--key=value`, and bare booleans `--key` (= true);
    /// a bare boolean consumes a following `true`/`false`. Unknown keys fail here, with a
    /// suggestion, because the parser must know a key's type to read a bare boolean.
    public func parseCommandLine(_ args: [String]) throws -> ConfigCommandLine {
        var out = ConfigCommandLine()
        var i = 0
        while i < args.count {
            let arg = args[i]
            i += 1
            if arg == "--help" || arg == "-h" { out.help = true; continue }
            guard arg.hasPrefix("--"), arg.count > 2 else { throw ConfigError.unexpectedArgument(arg) }
            var key = String(arg.dropFirst(2))
            var inlineValue: String? = nil
            if let eq = key.firstIndex(of: "=") {
                inlineValue = String(key[key.index(after: eq)...])
                key = String(key[..<eq])
            }
            if key == "help" { out.help = true; continue }
            if key == "module" || key == "config" {
                let v: String
                if let inlineValue { v = inlineValue } else {
                    guard i < args.count, !args[i].hasPrefix("--") else { throw ConfigError.missingValue(key: key, expected: "string") }
                    v = args[i]; i += 1
                }
                if key == "module" { out.module = v } else { out.config = v }
                continue
            }
            guard let f = field(key) else { throw ConfigError.unknownKey(key: key, suggestion: suggest(key)) }
            let value: String
            if let inlineValue {
                value = inlineValue
            } else if f.isBool {
                if i < args.count, Bool(configString: args[i]) != nil { value = args[i]; i += 1 } else { value = "true" }
            } else {
                guard i < args.count, !args[i].hasPrefix("--") else { throw ConfigError.missingValue(key: key, expected: f.typeName) }
                value = args[i]; i += 1
            }
            // Type-check now so the error points at the argument, before any work starts.
            guard f.accepts(value) else { throw ConfigError.badValue(key: key, value: value, expected: f.typeName) }
            out.assignments.append(ConfigAssignment(key: key, value: value))
        }
        return out
    }

    // MARK: suggestions

    /// Closest valid key by edit distance, also comparing against the last key component so
    /// that `--steps` suggests `training.steps`. Nil when nothing is reasonably close.
    public func suggest(_ key: String) -> String? {
        var best: (score: Int, full: Int, key: String)? = nil
        for f in fields {
            let full = editDistance(key, f.key)
            let last = editDistance(key, String(f.key.split(separator: ".").last ?? ""))
            let score = min(full, last)
            if best == nil || score < best!.score || (score == best!.score && full < best!.full) {
                best = (score, full, f.key)
            }
        }
        guard let b = best, b.score <= max(2, key.count / 2) else { return nil }
        return b.key
    }

    // MARK: help

    /// Every field with its type and its value in `root` (the selected config's default).
    public func helpText(defaults root: Root, header: String = "") -> String {
        var lines: [String] = []
        if !header.isEmpty { lines.append(header); lines.append("") }
        let keyWidth = min(48, (fields.map { $0.key.count }.max() ?? 0) + 2)
        var section = ""
        for f in fields {
            let sec = sectionName(f.key)
            if sec != section {
                section = sec
                if !lines.isEmpty { lines.append("") }
                lines.append("[\(sec)]" + (sectionDocs[sec].map { "  \($0)" } ?? ""))
            }
            let k = ("--" + f.key).padding(toLength: max(keyWidth + 2, f.key.count + 3), withPad: " ", startingAt: 0)
            lines.append("  \(k) \(f.typeName) (default: \(f.describe(root)))  \(f.doc)")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    private func sectionName(_ key: String) -> String {
        // "model.moe.num_experts" groups under "model.moe"; "training.steps" under "training".
        let parts = key.split(separator: ".")
        return parts.count <= 1 ? "" : parts.dropLast().joined(separator: ".")
    }

    // MARK: JSON

    /// Resolved config as pretty JSON, nested by key components, keys sorted (two dumps of the same config are
    /// byte-identical).
    public func json(of root: Root) throws -> String {
        var top: [String: Any] = [:]
        func insert(_ parts: ArraySlice<String>, _ value: Any, into node: inout [String: Any]) {
            guard parts.count > 1 else { node[parts.first!] = value; return }
            var child = node[parts.first!] as? [String: Any] ?? [:]
            insert(parts.dropFirst(), value, into: &child)
            node[parts.first!] = child
        }
        for f in fields { insert(ArraySlice(f.key.split(separator: ".").map(String.init)), f.toJSON(root), into: &top) }
        let data = try JSONSerialization.data(withJSONObject: top, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
        return String(decoding: data, as: UTF8.self) + "\n"
    }
}

/// Levenshtein distance (insert/delete/substitute, each cost 1).
public func editDistance(_ a: String, _ b: String) -> Int {
    let x = Array(a), y = Array(b)
    if x.isEmpty { return y.count }
    if y.isEmpty { return x.count }
    var prev = Array(0...y.count)
    var cur = [Int](repeating: 0, count: y.count + 1)
    for i in 1...x.count {
        cur[0] = i
        for j in 1...y.count {
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x[i - 1] == y[j - 1] ? 0 : 1))
        }
        swap(&prev, &cur)
    }
    return prev[y.count]
}
