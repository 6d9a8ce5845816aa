// Where every rank of a job listens: everything the transport needs to connect a process group.
// Built by the Cluster target from a topology file (or by the single-process runner).

import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

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
    /// tcp: CURVE (authenticated and encrypted, the default) or none. ipc and inproc ignore it: an ipc job is protected by
    /// its socket folder (0700, the user's own), an inproc one never leaves its process.
    public var transportSecurity: TransportSecurity
    /// The job's secret, from which every rank's CURVE keys derive (tcp with CURVE needs it; see CurveKeys.swift).
    public var jobSecret: JobSecret?
    /// The index of the topology host that runs each global rank (ipc topologies may have several hosts too; their
    /// addresses need not differ). Empty: every rank on one host.
    public var hostIndexOfRank: [Int]
    /// The simulated network the transport enforces (`LinkShaper`); nil: none, every link as fast as the sockets.
    public var network: NetworkSpec?

    /// Whether ranks `a` and `b` run on different hosts of the topology.
    public func crossesHosts(_ a: Int, _ b: Int) -> Bool {
        !hostIndexOfRank.isEmpty && hostIndexOfRank[a] != hostIndexOfRank[b]
    }

    /// The host index of global rank `rank` (0 when the spec names no hosts).
    public func hostIndex(ofRank rank: Int) -> Int { hostIndexOfRank.isEmpty ? 0 : hostIndexOfRank[rank] }

    /// Whether this job's sockets use CURVE.
    public var usesCurve: Bool { transport == .tcp && transportSecurity == .curve }

    /// Process groups one rank may create; tcp topologies reserve this many ports per rank.
    public static let maxGroupsPerRank = 16

    public init(jobID: String, worldSize: Int, transport: TransportKind,
                hostOfRank: [String] = [], portOfRank: [Int] = [],
                ipcDirectory: String = "/tmp", timeoutSeconds: Double = 300,
                transportSecurity: TransportSecurity = .curve, jobSecret: JobSecret? = nil,
                hostIndexOfRank: [Int] = [], network: NetworkSpec? = nil) {
        self.jobID = jobID
        self.worldSize = worldSize
        self.transport = transport
        self.hostOfRank = hostOfRank
        self.portOfRank = portOfRank
        self.ipcDirectory = ipcDirectory
        self.timeoutSeconds = timeoutSeconds
        self.transportSecurity = transportSecurity
        self.jobSecret = jobSecret
        self.hostIndexOfRank = hostIndexOfRank
        self.network = network
    }

    /// The endpoint rank `rank` binds for its process group number `groupSlot`. tcp binds only its host's address
    /// from the topology, never every interface.
    public func bindAddress(rank: Int, groupSlot: Int) -> String {
        switch transport {
        case .ipc: return "ipc://\(ipcDirectory)/g\(groupSlot)-r\(rank)"
        case .tcp: return "tcp://\(Self.bracketed(hostOfRank[rank])):\(portOfRank[rank] + groupSlot)"
        case .inproc: return "inproc://\(jobID)/g\(groupSlot)-r\(rank)"
        }
    }

    /// The endpoint other ranks connect to, to reach `rank` in its group number `groupSlot`.
    public func connectAddress(rank: Int, groupSlot: Int) -> String {
        switch transport {
        case .tcp: return "tcp://\(Self.bracketed(hostOfRank[rank])):\(portOfRank[rank] + groupSlot)"
        case .ipc, .inproc: return bindAddress(rank: rank, groupSlot: groupSlot)
        }
    }

    /// `bindAddress` with a host name resolved to its address (libzmq binds only addresses and interface names).
    /// A name that resolves to loopback while other hosts of the job are elsewhere is an error: those hosts could not
    /// reach it (Debian's /etc/hosts maps the machine's own name to 127.0.1.1).
    public func resolvedBindAddress(rank: Int, groupSlot: Int) throws -> String {
        guard transport == .tcp else { return bindAddress(rank: rank, groupSlot: groupSlot) }
        let host = hostOfRank[rank]
        guard !Self.isNumericAddress(host) else { return bindAddress(rank: rank, groupSlot: groupSlot) }
        guard let address = Self.resolve(host) else {
            throw CollectiveError.invalidArgument(nil, "rank \(rank): cannot resolve its host name \"\(host)\" to an address to listen on; write the host's IP address in the topology")
        }
        if Self.isLoopback(address), hostOfRank.contains(where: { !Self.isLoopback($0) && $0 != host }) {
            throw CollectiveError.invalidArgument(nil, "rank \(rank): its host name \"\(host)\" resolves to the loopback address \(address) on this machine (see /etc/hosts), where the job's other hosts cannot reach it; write the host's IP address in the topology")
        }
        return "tcp://\(Self.bracketed(address)):\(portOfRank[rank] + groupSlot)"
    }

    /// Whether a tcp endpoint needs ZMQ_IPV6 (an IPv6 address).
    static func isIPv6(_ host: String) -> Bool { host.contains(":") }

    static func bracketed(_ host: String) -> String { isIPv6(host) && !host.hasPrefix("[") ? "[\(host)]" : host }

    static func isLoopback(_ host: String) -> Bool {
        let h = host.lowercased()
        return h == "localhost" || h == "::1" || h.hasPrefix("127.")
    }

    static func isNumericAddress(_ host: String) -> Bool {
        var v4 = in_addr(), v6 = in6_addr()
        return inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1
    }

    /// The first address of `host` (IPv4 first), numeric.
    static func resolve(_ host: String) -> String? {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, nil, &hints, &list) == 0, let first = list else { return nil }
        defer { freeaddrinfo(first) }
        var candidates: [UnsafeMutablePointer<addrinfo>] = []
        var next: UnsafeMutablePointer<addrinfo>? = first
        while let entry = next { candidates.append(entry); next = entry.pointee.ai_next }
        guard let best = candidates.first(where: { $0.pointee.ai_family == AF_INET }) ?? candidates.first else { return nil }
        var text = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        guard getnameinfo(best.pointee.ai_addr, best.pointee.ai_addrlen, &text, socklen_t(text.count), nil, 0, NI_NUMERICHOST) == 0
        else { return nil }
        return String(cString: text)
    }
}
