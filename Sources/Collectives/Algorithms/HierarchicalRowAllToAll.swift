import Foundation

/// All-to-all-v of rows, hierarchical, with each row sent once per remote host (DeepEP's node-level dispatch): rows
/// with equal keys hold equal data (a token routed to several experts), so a member sends a remote host's gateway each
/// distinct row its members need once, with one index list per member, and the gateway rebuilds every member's block.
/// The result is the flat all-to-all's, bit for bit.
///
/// `sendRows[j]` rows of `rowBytes` go to member j (in member order in `send`), `keys[s]` is row s's key;
/// `receiveRows[i]` rows arrive from member i. Gateways and the order of messages are `hierarchicalAllToAll`'s; what
/// a member sends a remote host's gateway is: the number of distinct rows and each of the host's members' row counts
/// (Int64 each), the index lists (Int32, into the distinct rows, member after member), then the distinct rows.
func hierarchicalRowAllToAll<C: Channel>(_ ch: C, send: UnsafeRawPointer, rowBytes: Int, sendRows: [Int],
                                         keys: UnsafePointer<Int32>, receive: UnsafeMutableRawPointer, receiveRows: [Int],
                                         hosts: HostLayout, elementSize: Int) throws {
    let n = ch.size, r = ch.me, es = elementSize
    let h = hosts.hostOfMember[r], mine = hosts.hosts[h]
    let sendLayout = ChunkLayout(sizes: sendRows.map { $0 * rowBytes })
    let receiveLayout = ChunkLayout(sizes: receiveRows.map { $0 * rowBytes })
    let firstRow = ChunkLayout(sizes: sendRows).offsets
    /// Fills `destination` with bytes `range` of the rows `rows` laid end to end (segments may split a row).
    func gather(_ rows: [Int], from base: UnsafeRawPointer, _ range: Range<Int>, into destination: UnsafeMutableRawPointer) {
        var at = range.lowerBound
        while at < range.upperBound {
            let row = at / rowBytes, within = at % rowBytes
            let bytes = min(rowBytes - within, range.upperBound - at)
            memcpy(destination + (at - range.lowerBound), base + rows[row] * rowBytes + within, bytes)
            at += bytes
        }
    }
    if sendLayout.sizes[r] > 0 { memcpy(receive + receiveLayout.offsets[r], send + sendLayout.offsets[r], sendLayout.sizes[r]) }

    // Sends: this host's members directly, as the flat algorithm does.
    let l = hosts.localIndex(of: r)
    for k in 1..<max(mine.count, 1) {
        let j = mine[(l + k) % mine.count]
        for seg in Segments.of([sendLayout.range(j)], elementSize: es) { try ch.send(to: j, bytes: send + seg.lowerBound, count: seg.count) }
    }
    // Each remote host's distinct rows once, to its gateway.
    for d in 1..<hosts.hosts.count {
        let g = (h + d) % hosts.hosts.count, members = hosts.hosts[g], gw = hosts.gateway(of: r, on: g)
        var distinct: [Int] = [], position: [Int32: Int32] = [:], index: [Int32] = []
        for j in members {
            for s in firstRow[j]..<(firstRow[j] + sendRows[j]) {
                if let p = position[keys[s]] { index.append(p) } else {
                    position[keys[s]] = Int32(distinct.count)
                    index.append(Int32(distinct.count))
                    distinct.append(s)
                }
            }
        }
        let counts = [Int64(distinct.count)] + members.map { Int64(sendRows[$0]) }
        for small in [counts.withUnsafeBytes { Array($0) }, index.withUnsafeBytes { Array($0) }] {
            let m = try ch.newMessage(bytes: small.count)
            small.withUnsafeBytes { if $0.count > 0 { memcpy(m.bytes, $0.baseAddress!, $0.count) } }
            try ch.send(to: gw, payload: m)
        }
        for seg in Segments.of(distinct.count * rowBytes, elementSize: es) {
            let m = try ch.newMessage(bytes: seg.count)
            gather(distinct, from: send, seg, into: m.bytes)
            try ch.send(to: gw, payload: m)
        }
    }
    // As a gateway: every member's block rebuilt from the distinct rows and its index list.
    for i in 0..<n where hosts.hostOfMember[i] != h && hosts.gateway(of: i, on: h) == r {
        let meta = try ch.receive(from: i, expectedBytes: (1 + mine.count) * 8)
        let counts = (0...mine.count).map { Int(meta.bytes.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self)) }
        let listed = counts.dropFirst().reduce(0, +)
        let indexMessage = try ch.receive(from: i, expectedBytes: listed * 4)
        let index = (0..<listed).map { Int(indexMessage.bytes.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self)) }
        guard index.allSatisfy({ (0..<counts[0]).contains($0) }) else {
            throw CollectiveError.invalidArgument(nil, "row all-to-all: member \(i) sent an index outside its \(counts[0]) rows")
        }
        let distinct = UnsafeMutableRawPointer.allocate(byteCount: max(counts[0] * rowBytes, 1), alignment: 16)
        defer { distinct.deallocate() }
        for seg in Segments.of(counts[0] * rowBytes, elementSize: es) {
            let m = try ch.receive(from: i, expectedBytes: seg.count)
            if seg.count > 0 { memcpy(distinct + seg.lowerBound, m.bytes, seg.count) }
        }
        var first = 0
        for (j, rows) in zip(mine, counts.dropFirst()) {
            let block = Array(index[first..<(first + rows)])
            first += rows
            for seg in Segments.of(rows * rowBytes, elementSize: es) {
                if j == r { gather(block, from: distinct, seg, into: receive + receiveLayout.offsets[i] + seg.lowerBound); continue }
                let m = try ch.newMessage(bytes: seg.count)
                gather(block, from: distinct, seg, into: m.bytes)
                try ch.send(to: j, payload: m)
            }
        }
    }
    // Receives: this host's members directly, then the remote members' blocks from their gateways, in group order.
    try receiveFromHostAndGateways(ch, hosts: hosts, receive: receive, receiveLayout: receiveLayout, elementSize: es)
}
