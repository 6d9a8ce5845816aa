// A component's config section (torchtitan: each component owns its Config dataclass). The section declares its
// fields with keys relative to it ("lr" in [optimizer]) and checks itself; `ConfigSchema.section` places it in a
// job config, where its keys read "optimizer.lr" on the command line, in --help and in config.json.

public protocol ConfigSection: Equatable {
    /// Overridable fields, keyed relative to the section ("lr"; "moe.num_experts" for a subsection).
    static var fields: [ConfigField<Self>] { get }
    /// One line for --help.
    static var doc: String { get }
    /// Docs of subsections ("moe"), for --help.
    static var subsectionDocs: [String: String] { get }
    /// This section's own rules. Throw `ConfigError.invalid` with the key relative to the section.
    func validate() throws
}

public extension ConfigSection {
    static var subsectionDocs: [String: String] { [:] }
    func validate() throws {}
}
