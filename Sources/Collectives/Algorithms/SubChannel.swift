/// Some members of a channel as a channel of their own (a host's members, the hosts' leaders), so that hierarchical
/// algorithms run the flat ones on each level. Messages keep the parent's per-sender order: phases that run one after
/// another on every member never mix up their messages.
final class SubChannel<Parent: Channel>: Channel {
    typealias Message = Parent.Message
    let parent: Parent
    /// The parent's indices of this channel's members, in this channel's order.
    let members: [Int]
    let me: Int
    var size: Int { members.count }

    /// nil when the parent's member is not one of `members`.
    init?(_ parent: Parent, members: [Int]) {
        guard let me = members.firstIndex(of: parent.me) else { return nil }
        self.parent = parent
        self.members = members
        self.me = me
    }

    func send(to peer: Int, bytes: UnsafeRawPointer, count: Int) throws { try parent.send(to: members[peer], bytes: bytes, count: count) }
    func send(to peer: Int, payload: Message) throws { try parent.send(to: members[peer], payload: payload) }
    func newMessage(bytes: Int) throws -> Message { try parent.newMessage(bytes: bytes) }
    func receive(from peer: Int, expectedBytes: Int) throws -> Message {
        try parent.receive(from: members[peer], expectedBytes: expectedBytes)
    }
    func waitForSends() throws { try parent.waitForSends() }
}
