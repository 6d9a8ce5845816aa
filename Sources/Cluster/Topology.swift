// Topology: where the ranks of a job run (hosts, ranks per host, transport, ports) and the
// default parallelism degrees. Read from a TOML file (see topologies/*.toml) or derived for
// "N ranks on this machine". The launcher uses it to spawn ranks; every rank reloads the same
// file to build the ClusterSpec its transport needs.
//
// File format:
//
//     name = "local-8"
//     transport = "ipc"              # ipc | tcp                      (default ipc)
//     transport_security = "curve"   # tcp: curve (default) | none;  ipc: none only (its 0700 socket folder protects it)
//     base_port = 29500              # tcp: required here or per host; ipc: optional, unused
//     [[hosts]]                      # one table per host, in global rank order
//     address = "127.0.0.1"          # tcp: required, where the other hosts reach this one
//     ranks = 8                      # ranks on this host (>= 1)
//     base_port = 29500              # optional, overrides the top-level base_port
//     inter_host_gbit = 1.0          # optional, any [network] key: this host's own link (a slow host)
//     [network]                      # optional: the simulated network (default: unlimited, no added latency)
//     inter_host_gbit = 10           # each host's link to the other hosts, Gbit/s per direction (a NIC)
//     inter_host_latency_us = 20     # one-way delay added to every message between hosts
//     intra_host_gbit = 100          # each rank's link to the other ranks of its host, Gbit/s per direction
//     intra_host_latency_us = 1      # one-way delay added to every message within a host
//     [parallelism]                  # defaults; --parallelism.* overrides them at launch
//     data_parallel_replicate_degree = 1
//     data_parallel_shard_degree = -1    # -1 = fill the rest of the world
//     expert_parallel_degree = 4
//
// Global ranks are numbered host by host in file order; the ranks of a host are consecutive.
// With tcp, local rank l of a host listens on base_port + l * ClusterSpec.maxGroupsPerRank + slot
// for its process group slot (0 ..< maxGroupsPerRank), so a host reserves ranks * 16 ports, on its own address only.

import Config
import Foundation
import Collectives
import Parallel
import TOMLKit

public struct Topology: Sendable, Equatable {
    public struct Host: Sendable, Equatable {
        /// tcp: the address other hosts connect to. ipc: informational only.
        public var address: String
        public var ranks: Int
        /// First port of this host's rank 0 (tcp). nil: use the topology's basePort.
        public var basePort: Int?
        /// This host's own [network] values (a slow host); unset ones come from the topology's `network`.
        public var network: NetworkSettings

        public init(address: String, ranks: Int, basePort: Int? = nil, network: NetworkSettings = NetworkSettings()) {
            self.address = address
            self.ranks = ranks
            self.basePort = basePort
            self.network = network
        }
    }

    /// The keys of a `[network]` table (or of a host's overrides), as written: nil = not set.
    public struct NetworkSettings: Sendable, Equatable {
        public var inter_host_gbit: Double?
        public var inter_host_latency_us: Double?
        public var intra_host_gbit: Double?
        public var intra_host_latency_us: Double?

        public init(inter_host_gbit: Double? = nil, inter_host_latency_us: Double? = nil,
                    intra_host_gbit: Double? = nil, intra_host_latency_us: Double? = nil) {
            self.inter_host_gbit = inter_host_gbit
            self.inter_host_latency_us = inter_host_latency_us
            self.intra_host_gbit = intra_host_gbit
            self.intra_host_latency_us = intra_host_latency_us
        }

        static let keys: [(name: String, path: WritableKeyPath<NetworkSettings, Double?>)] = [
            ("inter_host_gbit", \.inter_host_gbit), ("inter_host_latency_us", \.inter_host_latency_us),
            ("intra_host_gbit", \.intra_host_gbit), ("intra_host_latency_us", \.intra_host_latency_us),
        ]

        public var isEmpty: Bool { self == NetworkSettings() }

        /// `self` where set, else `defaults`.
        func over(_ defaults: NetworkSettings) -> NetworkSettings {
            var merged = defaults
            for key in Self.keys where self[keyPath: key.path] != nil { merged[keyPath: key.path] = self[keyPath: key.path] }
            return merged
        }
    }

    public var name: String
    /// .ipc or .tcp (.inproc belongs to the single-process runner, never to a file).
    public var transport: TransportKind
    /// tcp: `.curve` (the default: authenticated and encrypted, only the job's keys admitted) or `.none` (a trusted
    /// network). ipc: always `.none` (the launcher's 0700 socket folder keeps other users out).
    public var transportSecurity: TransportSecurity
    /// Default first port for hosts that do not set their own.
    public var basePort: Int?
    public var hosts: [Host]
    /// Default parallelism degrees (torchtitan names), as written in the file (the shard degree may be -1, "fill the
    /// rest of the world"); `titan train` resolves and checks them with the model (`ParallelismConfig.dims`).
    public var parallelism: ParallelismConfig
    /// The `[network]` table: every host's links unless the host overrides a key (empty: no simulated network).
    public var network: NetworkSettings
    /// Absolute path of the file this topology was loaded from; nil when parsed from a string
    /// or built in code (e.g. `Topology.local`).
    public var sourcePath: String?

    public init(name: String, transport: TransportKind = .ipc, basePort: Int? = nil,
                hosts: [Host], parallelism: ParallelismConfig = ParallelismConfig(), sourcePath: String? = nil,
                transportSecurity: TransportSecurity? = nil, network: NetworkSettings = NetworkSettings()) {
        self.name = name
        self.network = network
        self.transport = transport
        self.transportSecurity = transportSecurity ?? (transport == .tcp ? .curve : .none)
        self.basePort = basePort
        self.hosts = hosts
        self.parallelism = parallelism
        self.sourcePath = sourcePath
    }

    // MARK: - Rank layout

    public var worldSize: Int { hosts.reduce(0) { $0 + $1.ranks } }

    /// Global ranks of host `host`: hosts in file order, ranks of a host consecutive.
    public func globalRanks(ofHost host: Int) -> Range<Int> {
        let first = hosts[..<host].reduce(0) { $0 + $1.ranks }
        return first ..< first + hosts[host].ranks
    }

    /// (host index, local rank) of a global rank.
    public func location(ofRank rank: Int) -> (host: Int, localRank: Int) {
        precondition(rank >= 0 && rank < worldSize, "rank \(rank) outside world of \(worldSize)")
        var first = 0
        for (index, host) in hosts.enumerated() {
            if rank < first + host.ranks { return (index, rank - first) }
            first += host.ranks
        }
        fatalError("unreachable")
    }

    /// The first port of `host` (its own base_port, else the topology's); nil when neither is set.
    public func basePort(ofHost host: Int) -> Int? { hosts[host].basePort ?? basePort }

    /// What the transport needs: every rank's host index (for hierarchical collectives); tcp also every rank's host and first port
    /// (host base_port + local_rank × ClusterSpec.maxGroupsPerRank); ipc only needs the folder,
    /// so its portOfRank stays empty.
    public func clusterSpec(jobID: String, ipcDirectory: String, timeoutSeconds: Double) -> ClusterSpec {
        var hostOfRank: [String] = []
        var hostIndexOfRank: [Int] = []
        var portOfRank: [Int] = []
        for (index, host) in hosts.enumerated() {
            for localRank in 0 ..< host.ranks {
                hostOfRank.append(host.address)
                hostIndexOfRank.append(index)
                if transport == .tcp, let base = basePort(ofHost: index) {
                    portOfRank.append(base + localRank * ClusterSpec.maxGroupsPerRank)
                }
            }
        }
        return ClusterSpec(jobID: jobID, worldSize: worldSize, transport: transport,
                           hostOfRank: hostOfRank, portOfRank: portOfRank,
                           ipcDirectory: ipcDirectory, timeoutSeconds: timeoutSeconds, transportSecurity: transportSecurity,
                           hostIndexOfRank: hostIndexOfRank, network: networkSpec)
    }

    /// The simulated network per host (a host's own keys over the `[network]` table); nil when neither sets any key,
    /// so a topology without the table runs exactly as before.
    public var networkSpec: NetworkSpec? {
        guard !network.isEmpty || hosts.contains(where: { !$0.network.isEmpty }) else { return nil }
        func link(_ gbit: Double?, _ latencyMicroseconds: Double?) -> NetworkSpec.Link {
            NetworkSpec.Link(bytesPerSecond: gbit.map { $0 * 1e9 / 8 },
                             latencyNanoseconds: UInt64((latencyMicroseconds ?? 0) * 1000))
        }
        return NetworkSpec(hosts: hosts.map { host in
            let settings = host.network.over(network)
            return NetworkSpec.Host(interHost: link(settings.inter_host_gbit, settings.inter_host_latency_us),
                                    intraHost: link(settings.intra_host_gbit, settings.intra_host_latency_us))
        })
    }

    // MARK: - Derived local topology

    /// The default topology for `ranks` processes on this machine: ipc, FSDP over all ranks,
    /// no replication, and expert parallelism over groups of 4 ranks when 4 divides the world
    /// (else 2, else 1). Groups of 4 (rather than all ranks) keep both communication patterns
    /// in play on 8 ranks: all-to-all inside an EP group and FSDP across EP groups.
    public static func local(ranks: Int) -> Topology {
        precondition(ranks >= 1, "a local topology needs at least one rank")
        var parallelism = ParallelismConfig()
        parallelism.data_parallel_shard_degree = ranks
        parallelism.expert_parallel_degree = [4, 2, 1].first { ranks % $0 == 0 }!
        return Topology(name: "local-\(ranks)", transport: .ipc, hosts: [Host(address: "127.0.0.1", ranks: ranks)],
                        parallelism: parallelism)
    }

    // MARK: - Loading

    /// Reads and validates a topology file. Errors name the file, the key and the reason.
    public static func load(path: String) throws -> Topology {
        let url = URL(fileURLWithPath: path)
        let text: String
        do {
            text = try String(contentsOf: url, encoding: .utf8)
        } catch {
            throw TopologyError(file: path, problems: [
                .init(kind: .io, key: nil, reason: "cannot read the file: \(error.localizedDescription)"),
            ])
        }
        var topology = try parse(toml: text, file: path)
        topology.sourcePath = url.standardizedFileURL.path
        return topology
    }

    /// Parses and validates TOML text. `file` names the source in error messages and gives the
    /// default name (its file stem) when the text has no `name`.
    public static func parse(toml: String, file: String) throws -> Topology {
        let root: TOMLTable
        do {
            root = try TOMLTable(string: toml)
        } catch let error as TOMLParseError {
            let at = error.source.begin
            throw TopologyError(file: file, problems: [
                .init(kind: .syntax, key: nil,
                      reason: "TOML syntax error at line \(at.line), column \(at.column): \(error.description)"),
            ])
        }
        var reader = TableReader()
        let defaultName = URL(fileURLWithPath: file).deletingPathExtension().lastPathComponent
        let topology = reader.readTopology(root, defaultName: defaultName)
        guard reader.problems.isEmpty, let topology else {
            throw TopologyError(file: file, problems: reader.problems)
        }
        let problems = topology.semanticProblems()
        guard problems.isEmpty else { throw TopologyError(file: file, problems: problems) }
        return topology
    }

    /// Checks a topology built in code (or edited after loading) with the same rules as a file.
    public func validate() throws {
        let problems = semanticProblems()
        guard problems.isEmpty else {
            throw TopologyError(file: sourcePath ?? "<topology \(name)>", problems: problems)
        }
    }

    /// Rules that involve values, not just their types: counts, transport, degrees, ports.
    func semanticProblems() -> [TopologyError.Problem] {
        var found: [TopologyError.Problem] = []
        if transport == .inproc {
            found.append(.init(kind: .invalidValue, key: "transport",
                               reason: "must be \"ipc\" or \"tcp\" (inproc is only for --single-process)"))
        }
        if transport == .ipc && transportSecurity == .curve {
            found.append(.init(kind: .invalidValue, key: "transport_security",
                               reason: "\"curve\" applies to tcp only: an ipc job's sockets are files in a folder only "
                                   + "its user can open (0700); remove the key or write \"none\""))
        }
        if hosts.isEmpty {
            found.append(.init(kind: .missingKey, key: "hosts",
                               reason: "needs at least one [[hosts]] table"))
        }
        for (index, host) in hosts.enumerated() where host.ranks < 1 {
            found.append(.init(kind: .invalidValue, key: "hosts[\(index)].ranks",
                               reason: "must be at least 1 (got \(host.ranks))"))
        }
        if transport == .tcp {
            for (index, host) in hosts.enumerated() {
                let address = host.address.trimmingCharacters(in: .whitespaces)
                if address.isEmpty || address == "*" || address == "0.0.0.0" || address.contains("://") {
                    found.append(.init(kind: .invalidValue, key: "hosts[\(index)].address",
                                       reason: "must be an address or host name the other hosts can "
                                           + "connect to (got \"\(host.address)\")"))
                }
            }
        }
        found += networkProblems(network, prefix: "network.")
        for (index, host) in hosts.enumerated() { found += networkProblems(host.network, prefix: "hosts[\(index)].") }
        found += portProblems()
        guard found.isEmpty else { return found }

        // The degrees' own rules (the model is not known here: its experts are checked when a job starts).
        do { _ = try parallelism.dims(worldSize: worldSize, numExperts: nil) } catch let ParallelError.invalidDegrees(key, reason) {
            found.append(.init(kind: .degrees, key: key, reason: reason))
        } catch {
            found.append(.init(kind: .degrees, key: "parallelism", reason: "\(error)"))
        }
        return found
    }

    /// Bandwidths must be positive (leave the key out for an unlimited link), latencies at least 0, both finite.
    private func networkProblems(_ settings: NetworkSettings, prefix: String) -> [TopologyError.Problem] {
        var found: [TopologyError.Problem] = []
        for key in NetworkSettings.keys {
            guard let value = settings[keyPath: key.path] else { continue }
            if key.name.hasSuffix("_gbit"), !(value > 0 && value.isFinite) {
                found.append(.init(kind: .invalidValue, key: prefix + key.name,
                                   reason: "must be a positive number of Gbit/s (got \(value)); leave the key out for an unlimited link"))
            } else if key.name.hasSuffix("_latency_us"), !(value >= 0 && value.isFinite) {
                found.append(.init(kind: .invalidValue, key: prefix + key.name,
                                   reason: "must be a number of microseconds >= 0 (got \(value))"))
            }
        }
        return found
    }

    private func portProblems() -> [TopologyError.Problem] {
        var found: [TopologyError.Problem] = []
        // The key a host's base port came from, for messages.
        func portKey(_ index: Int) -> String {
            hosts[index].basePort != nil ? "hosts[\(index)].base_port" : "base_port"
        }
        if let basePort, !(1 ... 65535).contains(basePort) {
            found.append(.init(kind: .ports, key: "base_port", reason: "must be in 1...65535 (got \(basePort))"))
        }
        for (index, host) in hosts.enumerated() {
            if let port = host.basePort, !(1 ... 65535).contains(port) {
                found.append(.init(kind: .ports, key: "hosts[\(index)].base_port",
                                   reason: "must be in 1...65535 (got \(port))"))
            }
        }
        guard transport == .tcp, found.isEmpty else { return found }

        // tcp: every host needs ranks × maxGroupsPerRank ports that fit and do not overlap the
        // ports of another host on the same machine.
        var ranges: [(host: Int, ports: ClosedRange<Int>)] = []
        for (index, host) in hosts.enumerated() where host.ranks >= 1 {
            guard let base = basePort(ofHost: index) else {
                found.append(.init(kind: .missingKey, key: "hosts[\(index)].base_port",
                                   reason: "tcp needs a base_port, at the top level or for this host"))
                continue
            }
            let last = base + host.ranks * ClusterSpec.maxGroupsPerRank - 1
            if last > 65535 {
                found.append(.init(kind: .ports, key: portKey(index),
                                   reason: "hosts[\(index)] needs ports \(base)...\(last) (\(host.ranks) ranks × "
                                       + "\(ClusterSpec.maxGroupsPerRank) ports), past 65535"))
                continue
            }
            ranges.append((index, base ... last))
        }
        for (j, b) in ranges.enumerated() {
            for a in ranges[..<j] {
                let hostA = hosts[a.host], hostB = hosts[b.host]
                guard Topology.machineKey(hostA.address) == Topology.machineKey(hostB.address),
                      a.ports.overlaps(b.ports) else { continue }
                found.append(.init(
                    kind: .ports, key: portKey(b.host),
                    reason: "ports \(b.ports.lowerBound)...\(b.ports.upperBound) of hosts[\(b.host)] "
                        + "(\(hostB.address)) overlap ports \(a.ports.lowerBound)...\(a.ports.upperBound) "
                        + "of hosts[\(a.host)] (\(hostA.address)) on the same machine; each rank uses "
                        + "\(ClusterSpec.maxGroupsPerRank) ports, so start hosts[\(b.host)] at "
                        + "\(a.ports.upperBound + 1) or later"))
            }
        }
        return found
    }

    /// Addresses that name the same machine. Ranks bind their host's address only, but all loopback
    /// aliases still count as one machine for port clashes (so a file works whatever other programs
    /// listen on): 127.0.0.1 and 127.0.0.2 do not share ports.
    static func machineKey(_ address: String) -> String {
        let lowered = address.lowercased()
        if Topology.isLoopback(lowered) { return "loopback" }
        return lowered
    }

    static func isLoopback(_ address: String) -> Bool {
        let lowered = address.lowercased()
        return lowered == "localhost" || lowered == "::1" || lowered.hasPrefix("127.")
    }

    // MARK: - Writing

    /// The topology as TOML text that `parse` reads back (the launcher writes it for ranks when
    /// the topology did not come from a file).
    public func tomlString() -> String {
        let root = TOMLTable()
        root["name"] = name
        root["transport"] = transport.rawValue
        if transport == .tcp || transportSecurity != .none { root["transport_security"] = transportSecurity.rawValue }
        if let basePort { root["base_port"] = basePort }
        let hostTables = TOMLArray()
        for host in hosts {
            let table = TOMLTable()
            table["address"] = host.address
            table["ranks"] = host.ranks
            if let port = host.basePort { table["base_port"] = port }
            Self.write(host.network, into: table)
            hostTables.append(table)
        }
        root["hosts"] = hostTables
        let degrees = TOMLTable()
        degrees["data_parallel_replicate_degree"] = parallelism.data_parallel_replicate_degree
        degrees["data_parallel_shard_degree"] = parallelism.data_parallel_shard_degree
        degrees["expert_parallel_degree"] = parallelism.expert_parallel_degree
        root["parallelism"] = degrees
        if !network.isEmpty {
            let table = TOMLTable()
            Self.write(network, into: table)
            root["network"] = table
        }
        return root.convert(to: .toml) + "\n"
    }

    private static func write(_ settings: NetworkSettings, into table: TOMLTable) {
        for key in NetworkSettings.keys { if let value = settings[keyPath: key.path] { table[key.name] = value } }
    }
}

/// Everything wrong with one topology file, each problem with its key and reason.
public struct TopologyError: Error, CustomStringConvertible, Equatable {
    public enum Kind: String, Sendable {
        case io, syntax, unknownKey, wrongType, missingKey, invalidValue, degrees, ports
    }

    public struct Problem: Sendable, Equatable {
        public var kind: Kind
        /// Dotted path such as `hosts[1].ranks`; nil for file-level problems (unreadable, syntax).
        public var key: String?
        public var reason: String
    }

    public var file: String
    public var problems: [Problem]

    public var description: String {
        let lines = problems.map { problem in
            problem.key.map { "\(file): \($0): \(problem.reason)" } ?? "\(file): \(problem.reason)"
        }
        if lines.count == 1 { return "invalid topology: " + lines[0] }
        return "invalid topology (\(lines.count) problems):\n" + lines.map { "  " + $0 }.joined(separator: "\n")
    }
}

// MARK: - TOML reading

/// Reads the TOML tree into a Topology, collecting every problem instead of stopping at the first,
/// so one run of the launcher reports all of a file's mistakes.
private struct TableReader {
    var problems: [TopologyError.Problem] = []

    static let topKeys = ["name", "transport", "transport_security", "base_port", "hosts", "parallelism", "network"]
    static let networkKeys = Topology.NetworkSettings.keys.map(\.name)
    static let hostKeys = ["address", "ranks", "base_port"] + networkKeys
    static let parallelismKeys = ["data_parallel_replicate_degree", "data_parallel_shard_degree",
                                  "expert_parallel_degree"]

    mutating func readTopology(_ root: TOMLTable, defaultName: String) -> Topology? {
        checkKeys(root, allowed: Self.topKeys, prefix: "")
        let name = string(root, "name", path: "name") ?? defaultName

        var transport = TransportKind.ipc
        if let text = string(root, "transport", path: "transport") {
            if text == "ipc" || text == "tcp", let kind = TransportKind(rawValue: text) {
                transport = kind
            } else {
                problems.append(.init(kind: .invalidValue, key: "transport",
                                      reason: "must be \"ipc\" or \"tcp\" (got \"\(text)\")"))
            }
        }
        var transportSecurity: TransportSecurity?
        if let text = string(root, "transport_security", path: "transport_security") {
            if let mode = TransportSecurity(rawValue: text) {
                transportSecurity = mode
            } else {
                problems.append(.init(kind: .invalidValue, key: "transport_security",
                                      reason: "must be \"curve\" or \"none\" (got \"\(text)\")"))
            }
        }
        let basePort = int(root, "base_port", path: "base_port")

        var hosts: [Topology.Host] = []
        if let value = root["hosts"] {
            if let array = value.array, array.allSatisfy({ $0.type == .table }) {
                for (index, element) in array.enumerated() {
                    guard let table = element.table else { continue }
                    let path = "hosts[\(index)]"
                    checkKeys(table, allowed: Self.hostKeys, prefix: path + ".")
                    var address = string(table, "address", path: path + ".address")
                    if address == nil {
                        if transport == .tcp {
                            problems.append(.init(kind: .missingKey, key: path + ".address",
                                                  reason: "tcp needs the address other hosts reach this host at"))
                        }
                        address = "127.0.0.1"
                    }
                    let ranks = int(table, "ranks", path: path + ".ranks")
                    if table["ranks"] == nil {
                        problems.append(.init(kind: .missingKey, key: path + ".ranks",
                                              reason: "every host needs `ranks` (the number of ranks it runs)"))
                    }
                    hosts.append(Topology.Host(address: address!, ranks: ranks ?? 0,
                                               basePort: int(table, "base_port", path: path + ".base_port"),
                                               network: networkSettings(table, prefix: path + ".")))
                }
            } else {
                problems.append(.init(kind: .wrongType, key: "hosts",
                                      reason: "expected an array of tables ([[hosts]] sections), got \(value.type)"))
            }
        } else {
            problems.append(.init(kind: .missingKey, key: "hosts",
                                  reason: "needs at least one [[hosts]] table with `ranks`"))
        }

        var parallelism = ParallelismConfig()
        if let value = root["parallelism"] {
            if let table = value.table {
                checkKeys(table, allowed: Self.parallelismKeys, prefix: "parallelism.")
                if let degree = int(table, "data_parallel_replicate_degree",
                                    path: "parallelism.data_parallel_replicate_degree") {
                    parallelism.data_parallel_replicate_degree = degree
                }
                if let degree = int(table, "data_parallel_shard_degree",
                                    path: "parallelism.data_parallel_shard_degree") {
                    parallelism.data_parallel_shard_degree = degree
                }
                if let degree = int(table, "expert_parallel_degree", path: "parallelism.expert_parallel_degree") {
                    parallelism.expert_parallel_degree = degree
                }
            } else {
                problems.append(.init(kind: .wrongType, key: "parallelism",
                                      reason: "expected a table ([parallelism] section), got \(value.type)"))
            }
        }
        var network = Topology.NetworkSettings()
        if let value = root["network"] {
            if let table = value.table {
                checkKeys(table, allowed: Self.networkKeys, prefix: "network.")
                network = networkSettings(table, prefix: "network.")
            } else {
                problems.append(.init(kind: .wrongType, key: "network",
                                      reason: "expected a table ([network] section), got \(value.type)"))
            }
        }
        guard problems.isEmpty else { return nil }
        return Topology(name: name, transport: transport, basePort: basePort, hosts: hosts,
                        parallelism: parallelism, transportSecurity: transportSecurity, network: network)
    }

    /// The [network] keys present in `table` (a [network] table or a host's overrides); their values are checked
    /// with the topology's other rules.
    mutating func networkSettings(_ table: TOMLTable, prefix: String) -> Topology.NetworkSettings {
        var settings = Topology.NetworkSettings()
        for key in Topology.NetworkSettings.keys {
            settings[keyPath: key.path] = number(table, key.name, path: prefix + key.name)
        }
        return settings
    }

    mutating func checkKeys(_ table: TOMLTable, allowed: [String], prefix: String) {
        for key in table.keys.sorted() where !allowed.contains(key) {
            let closest = allowed.min { editDistance($0, key) < editDistance($1, key) }!
            problems.append(.init(kind: .unknownKey, key: prefix + key,
                                  reason: "unknown key; did you mean `\(prefix)\(closest)`? "
                                      + "(valid here: \(allowed.joined(separator: ", ")))"))
        }
    }

    mutating func string(_ table: TOMLTable, _ key: String, path: String) -> String? {
        guard let value = table[key] else { return nil }
        guard let text = value.string else {
            problems.append(.init(kind: .wrongType, key: path, reason: "expected a string, got \(value.type)"))
            return nil
        }
        return text
    }

    /// An integer or a float (`1` and `1.6` are both Gbit/s).
    mutating func number(_ table: TOMLTable, _ key: String, path: String) -> Double? {
        guard let value = table[key] else { return nil }
        if let number = value.int { return Double(number) }
        guard let number = value.double else {
            problems.append(.init(kind: .wrongType, key: path, reason: "expected a number, got \(value.type)"))
            return nil
        }
        return number
    }

    mutating func int(_ table: TOMLTable, _ key: String, path: String) -> Int? {
        guard let value = table[key] else { return nil }
        guard let number = value.int else {
            problems.append(.init(kind: .wrongType, key: path, reason: "expected an integer, got \(value.type)"))
            return nil
        }
        return number
    }
}

