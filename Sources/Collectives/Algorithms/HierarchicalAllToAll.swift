import Foundation

/// Hierarchical all-to-all-v (the generic form of DeepEP's node-level dispatch): a member sends its blocks for a remote
/// host's members to one gateway on that host (the member at its own local index, modulo the host's size: one "rail"
/// per local index), which forwards each block inside its host. Every inter-host link then connects rails only, and a
/// member talks to one peer per remote host. Blocks are opaque here, so the bytes that cross hosts are the flat
/// algorithm's; carrying a token once per host needs the caller's rows (see `ProcessGroup.allToAll`).
///
/// 1. Sends: blocks for this host's members directly; for each remote host, the block sizes (Int64 each) and then the
///    blocks of its members in group order, to that host's gateway.
/// 2. As a gateway: from each remote member whose gateway this is, in group order, the sizes, then each block, kept
///    when it is this member's and forwarded to its member otherwise.
/// 3. Receives: this host's members' blocks directly, in group order, then the remote members' blocks from their
///    gateways, in group order (each gateway sends its own block first, then what it forwards in group order, so every
///    pair's messages arrive in the order they are taken). Data only moves: bitwise the flat algorithm's result.
func hierarchicalAllToAll<C: Channel>(_ ch: C, send: UnsafeRawPointer, sendLayout: ChunkLayout,
                                      receive: UnsafeMutableRawPointer, receiveLayout: ChunkLayout,
                                      hosts: HostLayout, elementSize: Int) throws {
    let n = ch.size, r = ch.me, es = elementSize
    let h = hosts.hostOfMember[r], mine = hosts.hosts[h]
    if sendLayout.sizes[r] > 0 { memcpy(receive + receiveLayout.offsets[r], send + sendLayout.offsets[r], sendLayout.sizes[r]) }

    // 1.
    let l = hosts.localIndex(of: r)
    for k in 1..<max(mine.count, 1) {
        let j = mine[(l + k) % mine.count]
        for seg in Segments.of([sendLayout.range(j)], elementSize: es) { try ch.send(to: j, bytes: send + seg.lowerBound, count: seg.count) }
    }
    // Block sizes host by host, lent to the transport until the sends complete.
    let sizes = hosts.hosts.flatMap { $0.map { Int64(sendLayout.sizes[$0]) } }
    let firstOfHost = hosts.hosts.reduce(into: [0]) { $0.append($0.last! + $1.count) }
    try sizes.withUnsafeBytes { sizeBytes in
        for d in 1..<hosts.hosts.count {
            let g = (h + d) % hosts.hosts.count, members = hosts.hosts[g], gw = hosts.gateway(of: r, on: g)
            try ch.send(to: gw, bytes: sizeBytes.baseAddress! + firstOfHost[g] * 8, count: members.count * 8)
            for seg in Segments.of(members.map(sendLayout.range), elementSize: es) {
                try ch.send(to: gw, bytes: send + seg.lowerBound, count: seg.count)
            }
        }
        // 2.
        for i in 0..<n where hosts.hostOfMember[i] != h && hosts.gateway(of: i, on: h) == r {
            let m = try ch.receive(from: i, expectedBytes: mine.count * 8)
            let blockSizes = (0..<mine.count).map { Int(m.bytes.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self)) }
            for (j, bytes) in zip(mine, blockSizes) {
                for seg in Segments.of(bytes, elementSize: es) {
                    let block = try ch.receive(from: i, expectedBytes: seg.count)
                    if j != r { try ch.send(to: j, payload: block) }
                    else if seg.count > 0 { memcpy(receive + receiveLayout.offsets[i] + seg.lowerBound, block.bytes, seg.count) }
                }
            }
        }
        // 3.
        try receiveFromHostAndGateways(ch, hosts: hosts, receive: receive, receiveLayout: receiveLayout, elementSize: es)
        try ch.waitForSends()   // `sizes` is lent until here
    }
}
