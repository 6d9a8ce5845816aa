// The simulated network: a topology's [network] table enforced on every message the transport sends, so that hosts
// simulated on one machine see the bandwidth and latency of the links between them.
//
// Links. Each host has one link to the other hosts, per direction (egress, ingress), shared by every flow leaving or
// entering the host, as a NIC is; each rank has one link to the other ranks of its host, per direction. A message
// needs time on its sender's egress link and its receiver's ingress link (inter-host links between hosts, the ranks'
// own links within a host), so a transfer runs at the slower end's rate and concurrent flows share a link.
//
// Mechanism. Every link is a "next free" time in a file that all rank processes of the machine map (in the job's
// private ipc folder). Sending a message books it: start = max(now, next free), next free = start + bytes / rate, one
// compare-and-swap, so every process sees one timeline. The sender stamps the header with the message's delivery
// time, end of its transmission + one-way latency, and goes on at once, as a CPU hands a NIC its queue (a sender that
// slept until its slot could not forward or reduce meanwhile: hierarchical collectives, whose leaders send across
// hosts and work inside theirs, lost a third of their gain that way). The receiver sleeps until the stamp
// (clock_nanosleep, never spinning: the ranks compute on these CPUs) before handing the message to the collective.
// Latency therefore delays every message without serialising pipelined segments, and a collective's algorithm knows
// nothing of any of it. Unlimited links (no key) book nothing; a topology without [network] builds
// no shaper at all.
//
// Clocks. Stamps and bookings are CLOCK_MONOTONIC, one clock for the processes of one machine: hosts simulated on one
// machine (ipc, or tcp over loopback addresses). Hosts on different real machines have their own clocks and their own
// network; leave [network] out there.

import CLinux
import Foundation

/// A job's simulated network, resolved per host (a host's own keys over the topology's [network] table).
public struct NetworkSpec: Sendable, Equatable {
    public struct Link: Sendable, Equatable {
        /// Bytes per second in each direction; nil: unlimited.
        public var bytesPerSecond: Double?
        /// One-way delay added to every message over the link.
        public var latencyNanoseconds: UInt64

        public init(bytesPerSecond: Double? = nil, latencyNanoseconds: UInt64 = 0) {
            self.bytesPerSecond = bytesPerSecond
            self.latencyNanoseconds = latencyNanoseconds
        }
    }

    public struct Host: Sendable, Equatable {
        /// The host's link to the other hosts (inter_host_*), shared by all its ranks.
        public var interHost: Link
        /// Each rank's link to the other ranks of the host (intra_host_*).
        public var intraHost: Link

        public init(interHost: Link = Link(), intraHost: Link = Link()) {
            self.interHost = interHost
            self.intraHost = intraHost
        }
    }

    /// Index: the topology's host index (`ClusterSpec.hostIndexOfRank`).
    public var hosts: [Host]

    public init(hosts: [Host]) { self.hosts = hosts }
}

/// Books, paces and delays the messages of one rank process (every group's worker uses it; bookings are atomic).
final class LinkShaper: @unchecked Sendable {
    private let network: NetworkSpec
    private let hostOfRank: [Int]
    private let links: OpaquePointer

    /// The shared file of the job's links, in its private ipc folder.
    static func path(_ spec: ClusterSpec) -> String { spec.ipcDirectory + "/network-links" }

    init(spec: ClusterSpec, network: NetworkSpec) throws {
        let hostOfRank = spec.hostIndexOfRank.isEmpty ? Array(repeating: 0, count: spec.worldSize) : spec.hostIndexOfRank
        guard hostOfRank.count == spec.worldSize, hostOfRank.allSatisfy({ network.hosts.indices.contains($0) }) else {
            throw CollectiveError.invalidArgument(nil, "the simulated network describes \(network.hosts.count) hosts, "
                + "but the ranks' hosts are \(hostOfRank)")
        }
        // Links: host h's egress 2h and ingress 2h+1, then rank r's within its host: egress 2H+2r, ingress 2H+2r+1.
        guard let links = titan_links_open(Self.path(spec), Int32(2 * (network.hosts.count + spec.worldSize))) else {
            throw CollectiveError.transport(nil, "cannot map the simulated network's links at \(Self.path(spec)): "
                + String(cString: strerror(errno)))
        }
        self.network = network
        self.hostOfRank = hostOfRank
        self.links = links
    }

    deinit { titan_links_close(links) }

    /// Before a message of `bytes` (everything it puts on the wire) goes from global rank `source` to `destination`:
    /// books the sender's egress and the receiver's ingress link and returns the message's
    /// delivery time (CLOCK_MONOTONIC ns) for the header; 0 when neither link is limited nor delayed.
    func depart(from source: Int, to destination: Int, bytes: Int) -> UInt64 {
        let a = hostOfRank[source], b = hostOfRank[destination], H = network.hosts.count
        let egress: (index: Int32, link: NetworkSpec.Link), ingress: (index: Int32, link: NetworkSpec.Link)
        let latencyNanoseconds: UInt64
        if a != b {
            egress = (Int32(2 * a), network.hosts[a].interHost)
            ingress = (Int32(2 * b + 1), network.hosts[b].interHost)
            latencyNanoseconds = max(egress.link.latencyNanoseconds, ingress.link.latencyNanoseconds)
        } else {
            egress = (Int32(2 * (H + source)), network.hosts[a].intraHost)
            ingress = (Int32(2 * (H + destination) + 1), network.hosts[a].intraHost)
            latencyNanoseconds = network.hosts[a].intraHost.latencyNanoseconds
        }
        let egressRate = egress.link.bytesPerSecond, ingressRate = ingress.link.bytesPerSecond
        if egressRate == nil && ingressRate == nil && latencyNanoseconds == 0 { return 0 }

        let now = titan_monotonic_ns()
        var departure = now, arrival = now
        var egressNanoseconds: UInt64 = 0
        if let egressRate {
            egressNanoseconds = Self.nanoseconds(bytes, egressRate)
            departure = titan_links_reserve(links, egress.index, now, egressNanoseconds)
            arrival = departure + egressNanoseconds
        }
        if let ingressRate {
            let ingressNanoseconds = Self.nanoseconds(bytes, ingressRate)
            let start = titan_links_reserve(links, ingress.index, departure, ingressNanoseconds)
            // Waiting for the receiver's link: move the sender's booking along when no one booked after it, so the
            // sender's link is not held idle meanwhile.
            if start > departure, egressRate != nil,
               titan_links_postpone(links, egress.index, arrival, start + egressNanoseconds) != 0 {
                arrival = start + egressNanoseconds
            }
            departure = start
            arrival = max(arrival, start + ingressNanoseconds)
        }
        return arrival + latencyNanoseconds
    }

    /// Before a received message is handed on: sleeps until its header's delivery time (0: none), but not past the
    /// collective's `deadline`; false when the delivery time lies beyond it (the collective then times out, as it does
    /// for any message that comes too late).
    static func deliver(atNanoseconds stamp: UInt64, before deadline: Date) -> Bool {
        guard stamp != 0 else { return true }   // no simulated network: no clock read on the hot path
        let now = titan_monotonic_ns()
        guard stamp > now else { return true }
        let remainingSeconds = deadline.timeIntervalSinceNow
        guard Double(stamp - now) / 1e9 <= remainingSeconds else {
            if remainingSeconds > 0 { titan_sleep_until_ns(now + UInt64(remainingSeconds * 1e9)) }
            return false
        }
        titan_sleep_until_ns(stamp)
        return true
    }

    private static func nanoseconds(_ bytes: Int, _ bytesPerSecond: Double) -> UInt64 {
        UInt64((Double(bytes) / bytesPerSecond * 1e9).rounded())
    }
}
