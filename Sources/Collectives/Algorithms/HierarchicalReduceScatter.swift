import Foundation

/// Hierarchical reduce-scatter for a group spanning several hosts, with one inter-host flow per member (NCCL's rings
/// per local rank): every byte crosses the host boundary once (each host sends the other hosts their chunks' partial
/// sums: 4/8 of the buffer on two hosts of 4, where the flat ring sends 7/8 over each boundary link), and the adding is
/// spread over every member.
///
/// 1. Each chunk has one reducer on every host: on its owner's host the owner, on another host the owner's gateway
///    there (`HostLayout.gateway`). Every member sends its input's segments to their chunks' reducers on its host,
///    the other hosts' chunks first, round by round (a segment of each per round), then this host's chunks.
/// 2. A reducer folds its host's contributions and sends an other host's chunk's partial sum straight to the owner, as
///    soon as it has it: the inter-host links start after one segment's adding and stay busy.
/// 3. The owner folds its chunk's partial sums over the hosts in ascending order.
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
    let segments = layout.sizes.map { Segments.of($0, elementSize: es) }   // byte ranges within each chunk
    func reducer(_ c: Int) -> Int { hosts.hostOfMember[c] == h ? c : hosts.gateway(of: c, on: h) }

    // The order every member of this host sends and folds in: (chunk, segment).
    let remote = (0..<ch.size).filter { hosts.hostOfMember[$0] != h }
    let rounds = remote.map { segments[$0].count }.max() ?? 0
    let work = (0..<rounds).flatMap { k in remote.filter { k < segments[$0].count }.map { (c: $0, s: k) } }
        + members.flatMap { c in segments[c].indices.map { (c: c, s: $0) } }

    // 1. Contributions to this host's other reducers.
    for (c, s) in work where reducer(c) != me {
        let seg = segments[c][s]
        try ch.send(to: reducer(c), bytes: input + layout.offsets[c] + seg.lowerBound, count: seg.count)
    }
    // 2. This member's folds; other hosts' chunks' partial sums go to their owners, this member's stay in `partial`.
    var partial = [Piece<C.Message>]()
    for (c, s) in work where reducer(c) == me {
        let seg = segments[c][s]
        let own = input + layout.offsets[c] + seg.lowerBound
        var piece = Piece<C.Message>(bytes: own, count: seg.count, message: nil)
        if members.count > 1 {
            let received = try members.map { m -> C.Message? in m == me ? nil : try ch.receive(from: m, expectedBytes: seg.count) }
            let sum = try ch.newMessage(bytes: seg.count)   // never into a received message: over inproc it is the sender's memory
            reduction.foldLeft(into: sum.bytes, received.map { $0.map { UnsafeRawPointer($0.bytes) } ?? own }, count: seg.count)
            withExtendedLifetime(received) {}
            piece = Piece(bytes: sum.bytes, count: seg.count, message: sum)
        }
        if c != me { try piece.send(ch, to: c) } else { partial.append(piece) }
    }
    // 3. This member's chunk folded over the hosts in order (into a fresh message: `output` may alias the input, which
    // is the host's partial sum when this member is alone on its host), then into place.
    for (s, seg) in segments[me].enumerated() {
        let received = try hosts.hosts.indices.map { k -> C.Message? in
            k == h ? nil : try ch.receive(from: hosts.gateway(of: me, on: k), expectedBytes: seg.count)
        }
        let sum = try ch.newMessage(bytes: seg.count)
        reduction.foldLeft(into: sum.bytes, received.map { $0.map { UnsafeRawPointer($0.bytes) } ?? partial[s].bytes }, count: seg.count)
        withExtendedLifetime(received) {}
        if seg.count > 0 { memcpy(output + seg.lowerBound, sum.bytes, seg.count) }
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
