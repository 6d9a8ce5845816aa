import CZeroMQ
import Foundation

/// The ZeroMQ channel of one member of one process group: its sockets and the framing of its messages.
///
/// Each member binds one PULL socket and connects one PUSH socket to every other member, all on the
/// group's own endpoints (`ClusterSpec.bindAddress(rank:groupSlot:)`), so groups never share a socket
/// and progress independently. Per sender, ZeroMQ delivers in order; frames that arrive before this
/// member asks for them (from a faster peer or a later collective) wait in a per-peer stash.
/// Used by one thread only: the group's worker.
///
/// With CURVE (`security`), the PULL socket is a CURVE server with this rank's keypair and each PUSH a CURVE client
/// that knows its peer's public key; the context's `Authenticator` admits only the job's keys and reports refusals.
///
/// Under a simulated network (`LinkShaper`), a send books its links and stamps the frame's delivery time, and a
/// receive hands the frame on at that time (not after the collective's deadline).
final class ZMQChannel: Channel {
    let spec: ClusterSpec
    let members: [Int]
    let me: Int           // index of this rank in `members`
    let slot: Int
    private let jobHash: UInt64
    private let groupHash: UInt32
    private let context: ZMQContext
    private var pull: ZMQSocket?
    private var push: [ZMQSocket?]
    private var stash: [[(FrameHeader, ZMQMessage)]]
    private let tracker = SendTracker()
    private let traffic: TrafficCounter
    /// Whether each member runs on another host than this rank (its bytes count as inter-host traffic).
    private let crossesHost: [Bool]
    /// The simulated network (nil: none).
    private let shaper: LinkShaper?
    private let headerScratch = UnsafeMutableRawPointer.allocate(byteCount: FrameHeader.size, alignment: 8)

    // State of the collective in progress.
    private(set) var info: CollectiveContextInfo
    private var sendIndex: [UInt32]
    private var receiveIndex: [UInt32]
    private var deadline = Date.distantFuture
    /// Its timeout, in seconds (what the errors report).
    private var timeout: Double
    /// Payload bytes the collective in progress has sent so far.
    private(set) var bytesSent = 0

    var size: Int { members.count }

    /// `endpointJobID` (tests only) names another job's endpoints, to check that its frames are refused.
    init(spec: ClusterSpec, context: ZMQContext, members: [Int], me: Int, slot: Int, traffic: TrafficCounter = TrafficCounter(),
         security: ChannelSecurity? = nil, shaper: LinkShaper? = nil, endpointJobID: String? = nil) throws {
        self.spec = spec
        self.traffic = traffic
        self.shaper = shaper
        crossesHost = members.map { spec.crossesHosts(members[me], $0) }
        self.context = context
        self.members = members
        self.me = me
        self.slot = slot
        jobHash = fnv1a64(Array(spec.jobID.utf8))
        groupHash = UInt32(truncatingIfNeeded: fnv1a64(members.flatMap { withUnsafeBytes(of: UInt32($0).littleEndian, Array.init) }))
        push = Array(repeating: nil, count: members.count)
        stash = Array(repeating: [], count: members.count)
        sendIndex = Array(repeating: 0, count: members.count)
        receiveIndex = Array(repeating: 0, count: members.count)
        info = CollectiveContextInfo(rank: members[me], kind: .barrier, sequence: 0, groupSlot: slot, groupMembers: members)
        timeout = spec.timeoutSeconds
        guard members.count > 1 else { return }  // a group of one needs no sockets

        var endpoints = spec
        if let endpointJobID { endpoints.jobID = endpointJobID }
        // These socket options keep the initial timeout when `Communicator.setTimeout` changes it later, and need not
        // follow: with no high-water mark a send only queues (even to a peer that is gone), so SNDTIMEO is a backstop
        // that never fires before a collective's own deadline, which does follow (`begin`); LINGER only bounds how
        // long a closing group keeps delivering what is queued (`abort` drops it at once).
        let timeoutMs = Int32(clamping: Int(spec.timeoutSeconds * 1000))
        do {
            let pull = try ZMQSocket(context: context, type: ZMQ_PULL)
            try pull.set(ZMQ_RCVHWM, 0)  // never push back on senders: every collective's volume is bounded
            try pull.set(ZMQ_RCVBUF, 4 << 20)
            let bindAddress = try endpoints.resolvedBindAddress(rank: members[me], groupSlot: slot)
            if spec.transport == .tcp, ClusterSpec.isIPv6(spec.hostOfRank[members[me]]) { try pull.set(ZMQ_IPV6, 1) }
            if let security {
                try pull.set(ZMQ_CURVE_SERVER, 1)
                try pull.set(ZMQ_CURVE_SECRETKEY, bytes: security.keys.secretKey)
                try security.authenticator.watch(pull, endpoint: bindAddress)   // before bind: every connection is seen
            }
            try pull.bind(bindAddress)
            self.pull = pull
            for (i, peer) in members.enumerated() where i != me {
                let s = try ZMQSocket(context: context, type: ZMQ_PUSH)
                try s.set(ZMQ_SNDHWM, 0)
                try s.set(ZMQ_SNDBUF, 4 << 20)
                try s.set(ZMQ_SNDTIMEO, timeoutMs)
                try s.set(ZMQ_LINGER, timeoutMs)  // deliver what is queued even if we close right after
                try s.set(ZMQ_RECONNECT_IVL, 10)  // peers bind at their own pace; retry quickly
                if spec.transport == .tcp, ClusterSpec.isIPv6(spec.hostOfRank[peer]) { try s.set(ZMQ_IPV6, 1) }
                if let security {
                    try s.set(ZMQ_CURVE_SERVERKEY, bytes: security.keys.publicKeys[peer])
                    try s.set(ZMQ_CURVE_PUBLICKEY, bytes: security.keys.publicKey)
                    try s.set(ZMQ_CURVE_SECRETKEY, bytes: security.keys.secretKey)
                }
                try s.connect(endpoints.connectAddress(rank: peer, groupSlot: slot))
                push[i] = s
            }
        } catch let e as ZMQCallError {
            throw CollectiveError.transport(nil, "rank \(members[me]) could not open group \(slot) \(members): \(e)")
        }
    }

    deinit { headerScratch.deallocate() }

    func close() {
        push = Array(repeating: nil, count: members.count)
        pull = nil
        stash = Array(repeating: [], count: members.count)
    }

    /// After a failed collective: drop whatever is still queued (peers are gone or out of step) so
    /// libzmq lets go of the caller's buffers before the error reaches the caller.
    func abort() {
        for s in push { try? s?.set(ZMQ_LINGER, 0) }
        close()
        _ = tracker.waitAllReleased(until: Date().addingTimeInterval(5))
    }

    // MARK: collective lifecycle

    func begin(_ kind: CollectiveKind, sequence: UInt64, timeoutSeconds: Double) {
        info.kind = kind
        info.sequence = sequence
        for i in 0..<members.count { sendIndex[i] = 0; receiveIndex[i] = 0 }
        bytesSent = 0
        timeout = timeoutSeconds
        deadline = Date().addingTimeInterval(timeoutSeconds)
    }

    /// Returns once libzmq holds no zero-copy payload of this collective any more,
    /// so the caller may reuse its buffers.
    func waitForSends() throws {
        guard tracker.waitAllReleased(until: deadline) else {
            throw CollectiveError.sendTimeout(info, peer: nil, seconds: timeout)
        }
    }

    // MARK: sending

    /// Sends `count` bytes at `bytes` to group member `peer` without copying them.
    func send(to peer: Int, bytes: UnsafeRawPointer, count: Int) throws {
        let payload: ZMQMessage
        do { payload = try ZMQMessage(borrowing: bytes, count: count, tracker: tracker) }
        catch { throw CollectiveError.transport(info, "\(error)") }
        try send(to: peer, payload: payload)
    }

    /// A message of `bytes` bytes owned by libzmq, to fill and send.
    func newMessage(bytes: Int) throws -> ZMQMessage {
        do { return try ZMQMessage(size: bytes) }
        catch { throw CollectiveError.transport(info, "\(error)") }
    }

    /// Sends a message this rank received or filled (ownership passes to libzmq, which may share the buffer).
    func send(to peer: Int, payload: ZMQMessage) throws {
        precondition(peer != me, "a rank does not message itself")
        guard let socket = push[peer] else { throw CollectiveError.groupClosed("group \(slot) is closed") }
        // Under a simulated network this books the links the message crosses (without waiting) and learns when it
        // arrives; the receiver holds it until then.
        let deliverAt = shaper?.depart(from: members[me], to: members[peer], bytes: FrameHeader.size + payload.count) ?? 0
        let header = FrameHeader(
            kindRaw: info.kind.rawValue, jobHash: jobHash, groupSlot: UInt32(slot), groupHash: groupHash,
            sequence: info.sequence, sourceRank: UInt32(members[me]), messageIndex: sendIndex[peer],
            payloadBytes: UInt64(payload.count), deliverAtNanoseconds: deliverAt)
        sendIndex[peer] += 1
        do {
            header.encode(into: headerScratch)
            let sent = try socket.sendCopy(headerScratch, count: FrameHeader.size, more: true)
            let bytes = payload.count
            guard sent, try socket.send(payload, more: false) else {
                throw CollectiveError.sendTimeout(info, peer: members[peer], seconds: timeout)
            }
            traffic.sent(info.kind, bytes: bytes, interHost: crossesHost[peer])
            bytesSent += bytes
        } catch let e as ZMQCallError {
            throw CollectiveError.transport(info, "sending to rank \(members[peer]): \(e)")
        }
    }

    // MARK: receiving

    /// The next message of this collective from group member `peer`, which must hold `expectedBytes`.
    func receive(from peer: Int, expectedBytes: Int) throws -> ZMQMessage {
        while stash[peer].isEmpty {
            try pumpOne(waitingFor: peer)
        }
        let (header, payload) = stash[peer].removeFirst()
        try validate(header, payload: payload, peer: peer, expectedBytes: expectedBytes)
        guard LinkShaper.deliver(atNanoseconds: header.deliverAtNanoseconds, before: deadline) else {
            throw CollectiveError.timeout(info, missingRanks: [members[peer]], seconds: timeout)
        }
        receiveIndex[peer] += 1
        traffic.received(info.kind, bytes: payload.count)
        return payload
    }

    /// Reads one frame pair from the socket into the stash, or throws when the deadline passes.
    private func pumpOne(waitingFor peer: Int) throws {
        guard let pull else { throw CollectiveError.groupClosed("group \(slot) is closed") }
        do {
            while true {
                let remaining = deadline.timeIntervalSinceNow
                if remaining <= 0 {
                    throw CollectiveError.timeout(info, missingRanks: [members[peer]], seconds: timeout)
                }
                if try pull.pollIn(milliseconds: Int(min(remaining, 1.0) * 1000) + 1) { break }
            }
            guard let headerFrame = try pull.receiveNow() else { return }
            let more = headerFrame.hasMore
            let header: FrameHeader
            do { header = try FrameHeader.decode(headerFrame.bytes, count: headerFrame.count) }
            catch {
                if more { _ = try pull.receiveNow() }
                throw CollectiveError.badFrame(info, peer: nil, reason: "undecodable header (\(error)); is another program sending to this job's sockets?")
            }
            guard more, let payload = try pull.receiveNow() else {
                throw CollectiveError.badFrame(info, peer: Int(header.sourceRank), reason: "header without payload frame")
            }
            guard header.jobHash == jobHash else {
                throw CollectiveError.badFrame(info, peer: Int(header.sourceRank), reason: "frame belongs to another job (job hash \(header.jobHash), expected \(jobHash))")
            }
            guard header.groupSlot == UInt32(slot), header.groupHash == groupHash else {
                throw CollectiveError.badFrame(info, peer: Int(header.sourceRank), reason: "frame belongs to group \(header.groupSlot) (hash \(header.groupHash)), not this group")
            }
            guard let source = members.firstIndex(of: Int(header.sourceRank)), source != me else {
                throw CollectiveError.badFrame(info, peer: Int(header.sourceRank), reason: "sender is not a member of this group")
            }
            stash[source].append((header, payload))
        } catch let e as ZMQCallError {
            throw CollectiveError.transport(info, "receiving: \(e)")
        }
    }

    private func validate(_ h: FrameHeader, payload: ZMQMessage, peer: Int, expectedBytes: Int) throws {
        let from = members[peer]
        if h.sequence != info.sequence {
            let other = CollectiveKind(rawValue: h.kindRaw).map(String.init(describing:)) ?? "kind \(h.kindRaw)"
            throw CollectiveError.badFrame(info, peer: from, reason: h.sequence > info.sequence
                ? "rank \(from) is already at \(other) #\(h.sequence): it ran fewer messages of this collective than this rank expects"
                : "stale frame of \(other) #\(h.sequence)")
        }
        guard h.kindRaw == info.kind.rawValue else {
            let other = CollectiveKind(rawValue: h.kindRaw).map(String.init(describing:)) ?? "kind \(h.kindRaw)"
            throw CollectiveError.badFrame(info, peer: from, reason: "rank \(from) called \(other) where this rank called \(info.kind)")
        }
        guard h.messageIndex == receiveIndex[peer] else {
            throw CollectiveError.badFrame(info, peer: from, reason: "message \(h.messageIndex) arrived where \(receiveIndex[peer]) was expected")
        }
        guard h.payloadBytes == UInt64(payload.count) else {
            throw CollectiveError.badFrame(info, peer: from, reason: "header says \(h.payloadBytes) bytes, frame holds \(payload.count)")
        }
        guard payload.count == expectedBytes else {
            throw CollectiveError.badFrame(info, peer: from, reason: "expected \(expectedBytes) bytes, got \(payload.count): the ranks disagree on sizes")
        }
    }
}

/// What a channel needs for CURVE: the rank's keys and its context's authenticator.
struct ChannelSecurity {
    let keys: JobKeys
    let authenticator: Authenticator
}
