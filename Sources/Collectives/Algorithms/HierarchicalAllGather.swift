import Foundation

/// Hierarchical all-gather for a group spanning several hosts, with one inter-host flow per member (NCCL's rings per
/// local rank): every byte crosses the host boundary once per remote host (the flat ring sends (n-1)/n of the buffer
/// over each boundary link; here 4/8 on two hosts of 4), and no single member carries a host's traffic.
///
/// Every member sends its chunk straight to its gateway on each other host (`HostLayout.gateway`: the member at its
/// local index there) and to the other members of its own host; a gateway hands each segment it receives from another
/// host to the other members of its host at once. All of it goes in rounds of one segment per chunk, so the slow
/// inter-host links and the fast copies inside a host work at the same time; a member's inter-host segments run one
/// round ahead, so its link is never left waiting for the host's copies.
/// Hosts may have different numbers of members and a group may hold any subset of a host's ranks. Data only moves,
/// so the result is bitwise the flat ring's. This rank's own chunk must already be in place in `output`.
func hierarchicalAllGather<C: Channel>(_ ch: C, output: UnsafeMutableRawPointer, layout: ChunkLayout, hosts: HostLayout,
                                       elementSize: Int) throws {
    let me = ch.me, h = hosts.hostOfMember[me]
    let segments = layout.sizes.indices.map { Segments.of([layout.range($0)], elementSize: elementSize) }
    let locals = hosts.hosts[h].filter { $0 != me }
    let gateways = hosts.hosts.indices.filter { $0 != h }.map { hosts.gateway(of: me, on: $0) }
    // relayedBy[j]: the other hosts' members whose chunks this host's member j receives and hands on, ascending.
    let remote = (0..<ch.size).filter { hosts.hostOfMember[$0] != h }
    let relayedBy = Dictionary(grouping: remote) { hosts.gateway(of: $0, on: h) }
    let rounds = segments.map(\.count).max() ?? 0

    func sendAcross(round k: Int) throws {
        guard k < segments[me].count else { return }
        let seg = segments[me][k]
        for g in gateways { try ch.send(to: g, bytes: output + seg.lowerBound, count: seg.count) }
    }
    /// Segment k of chunk i from member j (i itself, or i's gateway here); a gateway hands it on to the host first.
    func receive(round k: Int, chunk i: Int, from j: Int) throws {
        guard k < segments[i].count else { return }
        let seg = segments[i][k]
        let m = try ch.receive(from: j, expectedBytes: seg.count)
        if j == i, hosts.hostOfMember[i] != h { for l in locals { try ch.send(to: l, payload: m.share()) } }
        if seg.count > 0 { memcpy(output + seg.lowerBound, m.bytes, seg.count) }   // after the sends: they overlap it
    }
    try sendAcross(round: 0)
    for k in 0..<rounds {
        try sendAcross(round: k + 1)
        if k < segments[me].count {
            let seg = segments[me][k]
            for j in locals { try ch.send(to: j, bytes: output + seg.lowerBound, count: seg.count) }
        }
        // This host's segments first (sent at once), then the other hosts' (as late as the inter-host links make them):
        // those this member relays, then those the others relay, in the order each sends them. Copying what is here
        // while the inter-host segments travel shortens the tail.
        for j in locals { try receive(round: k, chunk: j, from: j) }
        for i in relayedBy[me, default: []] { try receive(round: k, chunk: i, from: i) }
        for j in locals {
            for i in relayedBy[j, default: []] { try receive(round: k, chunk: i, from: j) }
        }
    }
}
