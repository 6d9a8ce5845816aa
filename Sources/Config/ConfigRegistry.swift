// Named config functions, torchtitan style: `--module qwen3 --config debugmodel_moe` picks a
// function returning a complete config; command-line overrides are applied on top of it.

public struct ConfigRegistry<Root> {
    public struct Entry {
        public let module: String
        public let name: String
        public let doc: String
        public let make: () -> Root
    }

    public private(set) var entries: [Entry] = []

    public init() {}

    public mutating func register(module: String, name: String, doc: String = "", _ make: @escaping () -> Root) {
        precondition(entry(module: module, name: name) == nil, "ConfigRegistry: \(module)/\(name) registered twice")
        entries.append(Entry(module: module, name: name, doc: doc, make: make))
    }

    public func entry(module: String, name: String) -> Entry? {
        entries.first { $0.module == module && $0.name == name }
    }

    /// The config built by the registered function, or an error suggesting the closest name.
    public func make(module: String, name: String) throws -> Root {
        if let e = entry(module: module, name: name) { return e.make() }
        let all = entries.map { "\($0.module)/\($0.name)" }
        let sameModule = entries.filter { $0.module == module }
        let pool = sameModule.isEmpty ? entries : sameModule
        let best = pool.min { a, b in
            editDistance("\(module)/\(name)", "\(a.module)/\(a.name)") < editDistance("\(module)/\(name)", "\(b.module)/\(b.name)")
        }
        let suggestion = best.map { "--module \($0.module) --config \($0.name)" }
        throw ConfigError.unknownConfig(module: module, config: name, suggestion: suggestion, available: all)
    }

    /// One line per registered config, for --help.
    public var listing: String {
        let heads = entries.map { "  --module \($0.module) --config \($0.name)" }
        let width = heads.map(\.count).max() ?? 0
        return zip(heads, entries).map { head, e in
            e.doc.isEmpty ? head : head.padding(toLength: width + 2, withPad: " ", startingAt: 0) + e.doc
        }.joined(separator: "\n")
    }
}
