import Foundation

/// Hierarchical all-gather for a group spanning several hosts: every byte crosses the host boundary once per remote
/// host (the flat ring sends (n-1)/n of the buffer over each boundary link; here a host's leader sends the other hosts'
/// share only, e.g. 4/8 on two hosts of 4).
///
/// 1. A ring all-gather inside each host: every member holds its host's chunks.
/// 2. The hosts' leaders (each host's first member) run a ring all-gather whose pieces are whole hosts' chunks.
/// 3. Each leader passes the other hosts' chunks down a pipelined chain through its host.
/// Hosts may have different numbers of members and a group may hold any subset of a host's ranks. Data only moves,
/// so the result is bitwise the flat ring's. This rank's own chunk must already be in place in `output`.
func hierarchicalAllGather<C: Channel>(_ ch: C, output: UnsafeMutableRawPointer, layout: ChunkLayout, hosts: HostLayout,
                                       elementSize: Int) throws {
    let h = hosts.hostOfMember[ch.me]
    let local = SubChannel(ch, members: hosts.hosts[h])!
    try ringAllGather(local, output: output, pieces: hosts.hosts[h].map { [layout.range($0)] }, elementSize: elementSize)
    if let leaders = SubChannel(ch, members: hosts.hosts.map { $0[0] }) {
        try ringAllGather(leaders, output: output, pieces: hosts.hosts.map { $0.map(layout.range) }, elementSize: elementSize)
    }
    let otherHosts = hosts.hosts.indices.filter { $0 != h }.flatMap { hosts.hosts[$0].map(layout.range) }
    try chainBroadcast(local, buffer: output, ranges: otherHosts, root: 0, elementSize: elementSize)
}
