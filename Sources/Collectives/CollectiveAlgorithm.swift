import Foundation
/// Which family of algorithms a process group runs (`--comm.algorithm`).
///
/// - `ring`: the flat algorithms (ring all-gather / reduce-scatter / all-reduce, pairwise all-to-all), blind to hosts.
/// - `hierarchical`: algorithms that cross the host boundary as little as possible (Algorithms/Hierarchical*.swift):
///   each byte of an all-gather or reduce-scatter crosses it once, an all-to-all aggregates per remote host.
/// - `auto`: hierarchical for a group whose members span more than one host, else ring.
///
/// Broadcast and barrier run the same algorithm under every choice (the chain broadcast already crosses each host
/// boundary once when the group's members are ordered host by host).
public enum CollectiveAlgorithm: String, Sendable, CaseIterable {
    case auto, ring, hierarchical

    /// `auto` made concrete for a group spanning `hosts` hosts.
    public func resolved(hosts: Int) -> CollectiveAlgorithm {
        self == .auto ? (hosts > 1 ? .hierarchical : .ring) : self
    }
}

/// Where a process group's members live: the host of each member and, per host (in ascending host index), its members
/// in group order. Every member computes the same one from the cluster spec, so all agree on every phase's peers.
struct HostLayout: Equatable {
    /// hostOfMember[i]: the position (0 ..< hosts.count) of member i's host in `hosts`.
    let hostOfMember: [Int]
    /// The members (group indices, ascending) of each host the group spans, hosts in ascending host index.
    let hosts: [[Int]]

    /// `hostIndex[i]`: the host index of member i (any integers; only equality and order matter).
    init(hostIndex: [Int]) {
        let distinct = Array(Set(hostIndex)).sorted()
        let position = Dictionary(uniqueKeysWithValues: distinct.enumerated().map { ($1, $0) })
        hostOfMember = hostIndex.map { position[$0]! }
        var hosts = Array(repeating: [Int](), count: distinct.count)
        for (i, h) in hostOfMember.enumerated() { hosts[h].append(i) }
        self.hosts = hosts
    }

    /// member i's index among its host's members.
    func localIndex(of member: Int) -> Int { hosts[hostOfMember[member]].firstIndex(of: member)! }

    /// The member of `host` that relays `source`'s blocks for it in the hierarchical all-to-alls: the one at source's
    /// local index, modulo the host's size.
    func gateway(of source: Int, on host: Int) -> Int {
        let members = hosts[host]
        return members[localIndex(of: source) % members.count]
    }
}

/// The last step of both hierarchical all-to-alls: this host's members' blocks come directly, then the remote
/// members' blocks from their gateways here, in group order, each into its place at `receiveLayout`.
func receiveFromHostAndGateways<C: Channel>(_ ch: C, hosts: HostLayout, receive: UnsafeMutableRawPointer,
                                            receiveLayout: ChunkLayout, elementSize: Int) throws {
    let r = ch.me, h = hosts.hostOfMember[r]
    let direct = hosts.hosts[h].filter { $0 != r }
    let forwarded = (0..<ch.size).filter { hosts.hostOfMember[$0] != h && hosts.gateway(of: $0, on: h) != r }
    for i in direct + forwarded {
        let from = hosts.hostOfMember[i] == h ? i : hosts.gateway(of: i, on: h)
        for seg in Segments.of([receiveLayout.range(i)], elementSize: elementSize) {
            let m = try ch.receive(from: from, expectedBytes: seg.count)
            if seg.count > 0 { memcpy(receive + seg.lowerBound, m.bytes, seg.count) }
        }
    }
}
