// Where every rank of a job listens: everything the transport needs to connect a process group.
// Built by the Cluster target from a topology file (or by the single-process runner).

public enum TransportKind: String, Codable, Sendable, CaseIterable {
    /// Unix-domain sockets: ranks on one host (the default).
    case ipc
    /// TCP: ranks on several hosts.
    case tcp
    /// ZeroMQ in-process pipes: every rank is a thread of one process sharing one ZeroMQ context.
    case inproc
}

public struct ClusterSpec: Sendable, Equatable {
    /// Distinguishes concurrent jobs; every frame carries a hash of it.
    public var jobID: String
    public var worldSize: Int
    public var transport: TransportKind
    /// tcp: the address of the host that runs each global rank (`hostOfRank[r]`).
    public var hostOfRank: [String]
    /// tcp: the first port of each global rank. Rank r listens on `portOfRank[r] + groupSlot`
    /// for its process group number `groupSlot` (0 ..< maxGroupsPerRank).
    public var portOfRank: [Int]
    /// ipc: the folder that holds the socket files (kept short: sun_path is 107 bytes).
    public var ipcDirectory: String
    /// Receive/send timeout of every collective, in seconds.
    public var timeoutSeconds: Double

    /// Process groups one rank may create; tcp topologies reserve this many ports per rank.
    public static let maxGroupsPerRank = 16

    public init(jobID: String, worldSize: Int, transport: TransportKind,
                hostOfRank: [String] = [], portOfRank: [Int] = [],
                ipcDirectory: String = "/tmp", timeoutSeconds: Double = 300) {
        self.jobID = jobID
        self.worldSize = worldSize
        self.transport = transport
        self.hostOfRank = hostOfRank
        self.portOfRank = portOfRank
        self.ipcDirectory = ipcDirectory
        self.timeoutSeconds = timeoutSeconds
    }

    /// The endpoint rank `rank` binds for its process group number `groupSlot`.
    public func bindAddress(rank: Int, groupSlot: Int) -> String {
        switch transport {
        case .ipc: return "ipc://\(ipcDirectory)/g\(groupSlot)-r\(rank)"
        case .tcp: return "tcp://*:\(portOfRank[rank] + groupSlot)"
        case .inproc: return "inproc://\(jobID)/g\(groupSlot)-r\(rank)"
        }
    }

    /// The endpoint other ranks connect to, to reach `rank` in its group number `groupSlot`.
    public func connectAddress(rank: Int, groupSlot: Int) -> String {
        switch transport {
        case .tcp: return "tcp://\(hostOfRank[rank]):\(portOfRank[rank] + groupSlot)"
        case .ipc, .inproc: return bindAddress(rank: rank, groupSlot: groupSlot)
        }
    }
}
