import Foundation

/// Hierarchical all-gather for a group spanning several hosts: every byte crosses the host boundary once per remote
/// host (the flat ring sends (n-1)/n of the buffer over each boundary link; here a host's leader sends the other hosts
/// its host's share only, e.g. 4/8 on two hosts of 4).
///
/// 1. A ring all-gather inside each host: every member holds its host's chunks (a leader's own chunk already leaves
///    for the next host meanwhile).
/// 2. The hosts' leaders (each host's first member) run a ring all-gather whose pieces are whole hosts' chunks; a leader
///    hands each segment it receives down a pipelined chain through its host at once, so the slow inter-host ring and
///    the fast intra-host chain overlap.
/// Hosts may have different numbers of members and a group may hold any subset of a host's ranks. Data only moves,
/// so the result is bitwise the flat ring's. This rank's own chunk must already be in place in `output`.
func hierarchicalAllGather<C: Channel>(_ ch: C, output: UnsafeMutableRawPointer, layout: ChunkLayout, hosts: HostLayout,
                                       elementSize: Int) throws {
    let es = elementSize, H = hosts.hosts.count
    let h = hosts.hostOfMember[ch.me]
    let local = SubChannel(ch, members: hosts.hosts[h])!
    let leaders = H > 1 ? SubChannel(ch, members: hosts.hosts.map { $0[0] }) : nil   // nil unless this member leads
    // The host's segments go to the next leader in member order, the leader's own chunk first: that one is in place
    // already, so it goes out before the ring inside the host and the inter-host link starts at once. The rest go
    // one at a time between the received ones, so the inter-host link and the chain work at the same time (sending
    // them all at once after the ring measured slower on two shaped hosts: 50-56 ms against 47-49). All of
    // them precede the first forwarded segment (three hosts or more): the next leader takes them in that order.
    var own = Segments.of(hosts.hosts[h].map(layout.range), elementSize: es)[...]
    func sendOwn() throws {
        guard let leaders, let seg = own.popFirst() else { return }
        try leaders.send(to: (leaders.me + 1) % H, bytes: output + seg.lowerBound, count: seg.count)
    }
    while let seg = own.first, layout.range(ch.me).contains(seg.lowerBound), leaders != nil { try sendOwn() }
    try ringAllGather(local, output: output, pieces: hosts.hosts[h].map { [layout.range($0)] }, elementSize: es)
    guard H > 1 else { return }
    // Leader-ring step s delivers host (h - s - 1)'s chunks: the order they travel down the chain too.
    func hostArriving(at step: Int) -> Int { (h + 2 * H - step - 1) % H }
    guard let leaders else {
        let arriving = (0..<(H - 1)).flatMap { hosts.hosts[hostArriving(at: $0)].map(layout.range) }
        try chainBroadcast(local, buffer: output, ranges: arriving, root: 0, elementSize: es)
        return
    }
    let next = (leaders.me + 1) % H, prev = (leaders.me + H - 1) % H
    try sendOwn()
    for s in 0..<(H - 1) {
        for seg in Segments.of(hosts.hosts[hostArriving(at: s)].map(layout.range), elementSize: es) {
            try sendOwn()
            let m = try leaders.receive(from: prev, expectedBytes: seg.count)
            if s < H - 2 {
                while !own.isEmpty { try sendOwn() }
                try leaders.send(to: next, payload: m.share())
            }
            if local.size > 1 { try local.send(to: 1, payload: m.share()) }
            if seg.count > 0 { memcpy(output + seg.lowerBound, m.bytes, seg.count) }
        }
    }
    while !own.isEmpty { try sendOwn() }
}
