import Foundation

/// One rank's flight record (PyTorch's NCCL flight recorder): the last collectives of all its process groups, and
/// where each group stands. `Communicator.flightRecord` takes it; a failed or stopped rank writes it to
/// DUMP/flight/rank-K.json, and `FlightAnalysis` (Cluster) reads those files to name the rank that is behind.
public struct FlightRecord: Codable, Sendable, Equatable {
    public var rank: Int
    public var worldSize: Int
    public var jobID: String
    /// The ring's size (`traceBufferSize`): `entries` holds at most this many collectives.
    public var capacity: Int
    /// When the snapshot was taken, in seconds since 1970.
    public var time: Double
    /// Why the record was written (an error, a signal); set by the writer.
    public var reason: String?
    /// Every group this rank is a member of, by slot.
    public var groups: [Group]
    /// Oldest first.
    public var entries: [Entry]

    public struct Group: Codable, Sendable, Equatable {
        public var slot: Int
        /// Global ranks, in group order.
        public var members: [Int]
        /// Sequence numbers of the group's last collective submitted by the caller, picked up by the group's worker
        /// and completed (0: none). Kept apart from `entries`, so they survive the ring's wrap-around.
        public var lastEnqueued: UInt64
        public var lastStarted: UInt64
        public var lastCompleted: UInt64

        public init(slot: Int, members: [Int], lastEnqueued: UInt64 = 0, lastStarted: UInt64 = 0, lastCompleted: UInt64 = 0) {
            self.slot = slot
            self.members = members
            self.lastEnqueued = lastEnqueued
            self.lastStarted = lastStarted
            self.lastCompleted = lastCompleted
        }
    }

    public struct Entry: Codable, Sendable, Equatable {
        public enum State: String, Codable, Sendable {
            /// Submitted by the caller, queued on the group's worker.
            case scheduled
            /// The worker began it (after the straggler delay, if any).
            case started
            case completed
            /// Ended with an error (`error`); a failed collective may never have started (its group was broken).
            case failed
        }

        /// Global rank of the recording rank.
        public var rank: Int
        public var groupSlot: Int
        public var groupMembers: [Int]
        /// The group's sequence number of this collective (1 for its first).
        public var sequence: UInt64
        /// torch.distributed's name: all_gather, reduce_scatter, all_reduce, all_to_all, broadcast, barrier.
        public var kind: String
        /// Bytes of the input and output buffers (equal for in-place collectives; 0 for a barrier).
        public var inputBytes: Int
        public var outputBytes: Int
        public var state: State
        /// Wall-clock times in seconds since 1970, comparable across the ranks of one machine.
        public var scheduledAt: Double
        public var startedAt: Double?
        public var endedAt: Double?
        public var error: String?

        public init(rank: Int, groupSlot: Int, groupMembers: [Int], sequence: UInt64, kind: String, inputBytes: Int,
                    outputBytes: Int, state: State, scheduledAt: Double, startedAt: Double? = nil, endedAt: Double? = nil,
                    error: String? = nil) {
            self.rank = rank
            self.groupSlot = groupSlot
            self.groupMembers = groupMembers
            self.sequence = sequence
            self.kind = kind
            self.inputBytes = inputBytes
            self.outputBytes = outputBytes
            self.state = state
            self.scheduledAt = scheduledAt
            self.startedAt = startedAt
            self.endedAt = endedAt
            self.error = error
        }
    }

    public init(rank: Int, worldSize: Int, jobID: String, capacity: Int, time: Double, reason: String? = nil,
                groups: [Group], entries: [Entry]) {
        self.rank = rank
        self.worldSize = worldSize
        self.jobID = jobID
        self.capacity = capacity
        self.time = time
        self.reason = reason
        self.groups = groups
        self.entries = entries
    }
}

/// The ring behind `FlightRecord`: every group of one rank records here (from the callers' threads and the group
/// workers). Each state change is a lock and a store into a preexisting slot; only `snapshot` builds strings and
/// arrays. Capacity 0 records nothing.
final class FlightRecorder: @unchecked Sendable {
    /// Identifies one recorded collective for its later state changes.
    struct Token {
        let id: Int       // position in the stream of every collective recorded; its ring slot is id % capacity
        let slot: Int
        let sequence: UInt64
    }

    private struct Record {
        var id: Int
        var slot: Int
        var sequence: UInt64
        var kind: CollectiveKind
        var inputBytes: Int
        var outputBytes: Int
        var state: FlightRecord.Entry.State
        var scheduledAt: Double
        var startedAt: Double?
        var endedAt: Double?
        var error: String?
    }

    let capacity: Int
    private let rank: Int
    private let lock = NSLock()
    private var ring: [Record] = []
    private var nextID = 0
    private var groups: [FlightRecord.Group?] = Array(repeating: nil, count: ClusterSpec.maxGroupsPerRank)

    init(rank: Int, capacity: Int) {
        self.rank = rank
        self.capacity = max(0, capacity)
    }

    private static var now: Double { Date().timeIntervalSince1970 }

    func addGroup(slot: Int, members: [Int]) {
        lock.lock(); defer { lock.unlock() }
        groups[slot] = FlightRecord.Group(slot: slot, members: members)
    }

    /// The caller submitted a collective (in sequence order per group: the group records under its own lock).
    func scheduled(_ kind: CollectiveKind, slot: Int, sequence: UInt64, inputBytes: Int, outputBytes: Int) -> Token {
        guard capacity > 0 else { return Token(id: 0, slot: slot, sequence: sequence) }
        let time = Self.now
        lock.lock(); defer { lock.unlock() }
        let token = Token(id: nextID, slot: slot, sequence: sequence)
        nextID += 1
        groups[slot]?.lastEnqueued = sequence
        let record = Record(id: token.id, slot: slot, sequence: sequence, kind: kind, inputBytes: inputBytes,
                            outputBytes: outputBytes, state: .scheduled, scheduledAt: time)
        if ring.count < capacity { ring.append(record) } else { ring[token.id % capacity] = record }
        return token
    }

    /// The group's worker began it.
    func started(_ token: Token) {
        guard capacity > 0 else { return }
        let time = Self.now
        lock.lock(); defer { lock.unlock() }
        groups[token.slot]?.lastStarted = token.sequence
        update(token) { $0.state = .started; $0.startedAt = time }
    }

    /// It ended: completed (`error` nil) or failed.
    func ended(_ token: Token, error: Error?) {
        guard capacity > 0 else { return }
        let time = Self.now
        let text = error.map { "\($0)" }   // only a failure builds a string
        lock.lock(); defer { lock.unlock() }
        if text == nil { groups[token.slot]?.lastCompleted = token.sequence }
        update(token) {
            $0.state = text == nil ? .completed : .failed
            $0.endedAt = time
            $0.error = text
        }
    }

    /// Changes the token's record unless the ring has overwritten it since.
    private func update(_ token: Token, _ change: (inout Record) -> Void) {
        let index = token.id % capacity
        if index < ring.count, ring[index].id == token.id { change(&ring[index]) }
    }

    func snapshot(worldSize: Int, jobID: String) -> FlightRecord {
        lock.lock()
        let records = ring.sorted { $0.id < $1.id }
        let groups = self.groups.compactMap { $0 }
        lock.unlock()
        let members = Dictionary(uniqueKeysWithValues: groups.map { ($0.slot, $0.members) })
        let entries = records.map { r in
            FlightRecord.Entry(rank: rank, groupSlot: r.slot, groupMembers: members[r.slot] ?? [], sequence: r.sequence,
                               kind: r.kind.name.description, inputBytes: r.inputBytes, outputBytes: r.outputBytes,
                               state: r.state, scheduledAt: r.scheduledAt, startedAt: r.startedAt, endedAt: r.endedAt,
                               error: r.error)
        }
        return FlightRecord(rank: rank, worldSize: worldSize, jobID: jobID, capacity: capacity, time: Self.now,
                            groups: groups, entries: entries)
    }
}
