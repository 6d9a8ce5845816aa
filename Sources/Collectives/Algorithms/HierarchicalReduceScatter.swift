import Foundation

/// Hierarchical reduce-scatter for a group spanning several hosts: every byte crosses the host boundary once (each
/// host's reducer sends the other hosts their chunks' partial sums: 4/8 of the buffer on two hosts of 4, where the
/// flat ring sends 7/8 over each boundary link).
///
/// 1. A pipelined chain through each host in member order: the first member sends its input, each next one adds its
///    own; the host's last member (its reducer) gets the host's partial sums, the other hosts' chunks first, and sends
///    each to that chunk's host's reducer as soon as it has it (the inter-host transfer overlaps the chain).
/// 2. Each reducer folds its own host's chunks over the hosts in ascending order,
/// 3. and sends each member of its host that member's reduced chunk.
///
/// Fold order, the same on every run: chunk c = (…((P₀ + P₁) + P₂) …) + P_{H-1}, hosts in ascending host index, where
/// P_k = (…((x_a + x_b) + x_c) …) over host k's members in group order. It differs from the ring's (which starts after
/// member c), so float sums agree with the ring to rounding only; max, integer sums and every data movement are
/// bitwise the ring's. Reproducing the ring's order would move a partial across the boundary at each host change of
/// its chain c+1, c+2, …, c: twice for most chunks, the ring's 7/8 (docs/architecture.md, "Hierarchical collectives").
/// `output` may alias this member's input chunk.
func hierarchicalReduceScatter<C: Channel>(_ ch: C, input: UnsafeRawPointer, output: UnsafeMutableRawPointer,
                                           layout: ChunkLayout, hosts: HostLayout, reduction: ByteReduction) throws {
    let es = reduction.elementSize, me = ch.me
    let h = hosts.hostOfMember[me]
    let members = hosts.hosts[h]
    let local = SubChannel(ch, members: members)!
    let reducers = hosts.hosts.map { $0.last! }
    let segments = layout.sizes.map { Segments.of($0, elementSize: es) }

    // 1. The chain, the other hosts' chunks first (hosts in turn from this one's next); the reducer sends those partial
    // sums on and keeps its own host's in partial[c][s] (segment s of chunk c).
    let H = hosts.hosts.count
    let order = (1..<H).flatMap { hosts.hosts[(h + $0) % H] } + members
    var partial = Array(repeating: [Piece<C.Message>](), count: layout.sizes.count)
    for c in order {
        let g = hosts.hostOfMember[c]
        for seg in segments[c] {
            let own = input + layout.offsets[c] + seg.lowerBound
            var piece: Piece<C.Message>?
            if local.size == 1 {
                piece = Piece(bytes: own, count: seg.count, message: nil)
            } else if local.me == 0 {
                try local.send(to: 1, bytes: own, count: seg.count)
            } else {
                let m = try local.receive(from: local.me - 1, expectedBytes: seg.count)
                let sum = try ch.newMessage(bytes: seg.count)   // never into `m`: over inproc it is the sender's memory
                reduction.combine(sum.bytes, m.bytes, own, seg.count)
                if local.me < local.size - 1 { try local.send(to: local.me + 1, payload: sum) }
                else { piece = Piece(bytes: sum.bytes, count: seg.count, message: sum) }
            }
            guard let piece else { continue }
            if g != h { try piece.send(ch, to: reducers[g]) } else { partial[c].append(piece) }
        }
    }
    guard me == reducers[h] else {
        // 3. (non-reducers) this member's chunk from its host's reducer.
        for seg in segments[me] {
            let m = try ch.receive(from: reducers[h], expectedBytes: seg.count)
            if seg.count > 0 { memcpy(output + seg.lowerBound, m.bytes, seg.count) }
        }
        return
    }
    // 2. and 3. This host's chunks folded over the hosts in order (into a fresh message: `output` may alias this
    // member's input, a partial sum still to be added when it is alone on its host), then to their owners.
    for c in members {
        for (s, seg) in segments[c].enumerated() {
            let sum = try ch.newMessage(bytes: seg.count)
            for k in hosts.hosts.indices {
                let received: C.Message? = try k == h ? nil : ch.receive(from: reducers[k], expectedBytes: seg.count)
                let operand = received.map { UnsafeRawPointer($0.bytes) } ?? partial[c][s].bytes
                if k == 0 { if seg.count > 0 { memcpy(sum.bytes, operand, seg.count) } }
                else { reduction.combine(sum.bytes, sum.bytes, operand, seg.count) }
            }
            if c != me { try ch.send(to: c, payload: sum) }
            else if seg.count > 0 { memcpy(output + seg.lowerBound, sum.bytes, seg.count) }
        }
    }
}

/// A segment of a host partial sum: in a message the reducer made, or (a host of one member) in the input.
private struct Piece<Message: ChannelMessage> {
    let bytes: UnsafeRawPointer
    let count: Int
    let message: Message?

    func send<C: Channel>(_ ch: C, to peer: Int) throws where C.Message == Message {
        if let message { try ch.send(to: peer, payload: message) }
        else { try ch.send(to: peer, bytes: bytes, count: count) }
    }
}
