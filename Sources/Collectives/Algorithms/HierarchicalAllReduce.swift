/// Hierarchical all-reduce: hierarchical reduce-scatter of n near-equal chunks, then hierarchical all-gather, in place.
/// Each chunk is reduced once, at its owner's host reducer, in the reduce-scatter's fold order, and then copied
/// everywhere: every member ends with bitwise the same result.
func hierarchicalAllReduce<C: Channel>(_ ch: C, buffer: UnsafeMutableRawPointer, count: Int, hosts: HostLayout,
                                       reduction: ByteReduction, finish: (UnsafeMutableRawPointer, Int) -> Void) throws {
    let layout = ChunkLayout.even(count: count, parts: ch.size, elementSize: reduction.elementSize)
    let mine = buffer + layout.offsets[ch.me]
    try hierarchicalReduceScatter(ch, input: buffer, output: mine, layout: layout, hosts: hosts, reduction: reduction)
    finish(mine, layout.sizes[ch.me])
    // The reduce-scatter lent slices of `buffer` to the transport; the all-gather overwrites them.
    try ch.waitForSends()
    try hierarchicalAllGather(ch, output: buffer, layout: layout, hosts: hosts, elementSize: reduction.elementSize)
}
