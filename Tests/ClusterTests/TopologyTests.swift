import Parallel
import XCTest
import Collectives
@testable import Cluster

/// The repository's topologies/ folder (Tests/ClusterTests/ → ../../topologies).
let topologiesFolder = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("topologies").path

final class TopologyTests: XCTestCase {
    /// Parses `toml`, expecting it to fail; returns the error.
    func parseError(_ toml: String, file: String = "bad.toml",
                    line: UInt = #line) -> TopologyError? {
        do {
            let topology = try Topology.parse(toml: toml, file: file)
            XCTFail("expected an error, parsed \(topology)", line: line)
            return nil
        } catch let error as TopologyError {
            return error
        } catch {
            XCTFail("unexpected error type \(error)", line: line)
            return nil
        }
    }

    /// Asserts the error has a problem of `kind` at `key` whose reason contains `reason`, and
    /// that the printed message names the file and the key.
    func assertProblem(_ error: TopologyError?, _ kind: TopologyError.Kind, key: String?,
                       reason: String, line: UInt = #line) {
        guard let error else { return }
        let match = error.problems.first { $0.kind == kind && $0.key == key && $0.reason.contains(reason) }
        XCTAssertNotNil(match, "no \(kind) problem at \(key ?? "-") containing \"\(reason)\" in:\n\(error)",
                        line: line)
        XCTAssertTrue(error.description.contains(error.file), "message lacks the file: \(error)", line: line)
        if let key {
            XCTAssertTrue(error.description.contains("\(error.file): \(key): "),
                          "message lacks the key: \(error)", line: line)
        }
    }

    // MARK: valid files

    func testParsesHostsAndRankLayout() throws {
        let topology = try Topology.parse(toml: """
            name = "mixed"
            transport = "tcp"
            base_port = 20000
            [[hosts]]
            address = "10.0.0.1"
            ranks = 2
            [[hosts]]
            address = "10.0.0.2"
            ranks = 3
            base_port = 21000
            [parallelism]
            data_parallel_shard_degree = -1
            """, file: "mixed.toml")
        XCTAssertEqual(topology.name, "mixed")
        XCTAssertEqual(topology.transport, .tcp)
        XCTAssertEqual(topology.worldSize, 5)
        XCTAssertEqual(topology.globalRanks(ofHost: 0), 0 ..< 2)
        XCTAssertEqual(topology.globalRanks(ofHost: 1), 2 ..< 5)
        XCTAssertTrue(topology.location(ofRank: 3) == (host: 1, localRank: 1))
        XCTAssertEqual(topology.basePort(ofHost: 0), 20000)
        XCTAssertEqual(topology.basePort(ofHost: 1), 21000)
        XCTAssertEqual(topology.parallelism.data_parallel_shard_degree, -1)
        XCTAssertEqual(try topology.parallelism.dims(worldSize: topology.worldSize, numExperts: nil), ParallelDims(replicate: 1, shard: 5, ep: 1))
    }

    func testNameDefaultsToFileStemAndTransportToIPC() throws {
        let topology = try Topology.parse(toml: "[[hosts]]\nranks = 2\n", file: "/x/y/my-box.toml")
        XCTAssertEqual(topology.name, "my-box")
        XCTAssertEqual(topology.transport, .ipc)
        XCTAssertEqual(topology.hosts, [.init(address: "127.0.0.1", ranks: 2)])
    }

    func testShippedTopologiesLoad() throws {
        for ranks in [1, 2, 4, 8] {
            let path = topologiesFolder + "/local-\(ranks).toml"
            let topology = try Topology.load(path: path)
            var expected = Topology.local(ranks: ranks)
            expected.sourcePath = topology.sourcePath
            XCTAssertEqual(topology, expected, "local-\(ranks).toml should match Topology.local(ranks: \(ranks))")
            XCTAssertEqual(topology.sourcePath, URL(fileURLWithPath: path).standardizedFileURL.path)
        }
        let twoHosts = try Topology.load(path: topologiesFolder + "/two-host-tcp.toml")
        XCTAssertEqual(twoHosts.transport, .tcp)
        XCTAssertEqual(twoHosts.worldSize, 8)
        XCTAssertEqual(twoHosts.hosts.map(\.address), ["127.0.0.1", "127.0.0.2"])
        XCTAssertEqual(twoHosts.parallelism.expert_parallel_degree, 4)
    }

    func testEveryShippedFileParses() throws {
        let files = try FileManager.default.contentsOfDirectory(atPath: topologiesFolder)
            .filter { $0.hasSuffix(".toml") }
        XCTAssertGreaterThanOrEqual(files.count, 5)
        for file in files {
            XCTAssertNoThrow(try Topology.load(path: topologiesFolder + "/" + file), file)
        }
    }

    func testLocalTopologyDefaults() {
        let expectedEP = [1: 1, 2: 2, 3: 1, 4: 4, 6: 2, 8: 4, 12: 4]
        for (ranks, ep) in expectedEP {
            let topology = Topology.local(ranks: ranks)
            XCTAssertEqual(topology.worldSize, ranks)
            XCTAssertEqual(topology.transport, .ipc)
            XCTAssertEqual([topology.parallelism.data_parallel_replicate_degree, topology.parallelism.data_parallel_shard_degree,
                            topology.parallelism.expert_parallel_degree], [1, ranks, ep])
            XCTAssertNoThrow(try topology.validate())
        }
    }

    func testTransportSecurityKey() throws {
        let tcp = "transport = \"tcp\"\nbase_port = 1000\n[[hosts]]\naddress = \"10.0.0.1\"\nranks = 1\n"
        XCTAssertEqual(try Topology.parse(toml: tcp, file: "t.toml").transportSecurity, .curve, "tcp defaults to curve")
        let plain = try Topology.parse(toml: "transport_security = \"none\"\n" + tcp, file: "t.toml")
        XCTAssertEqual(plain.transportSecurity, .none)
        XCTAssertFalse(plain.clusterSpec(jobID: "j", ipcDirectory: "/tmp", timeoutSeconds: 1).usesCurve)
        var reparsed = try Topology.parse(toml: plain.tomlString(), file: "t.toml")
        reparsed.sourcePath = plain.sourcePath
        XCTAssertEqual(reparsed, plain, "written back for the ranks (an elastic shrink's topology keeps it)")
        XCTAssertTrue(plain.tomlString().contains("transport_security = 'none'") || plain.tomlString().contains("transport_security = \"none\""),
                      plain.tomlString())

        XCTAssertEqual(Topology.local(ranks: 2).transportSecurity, .none, "ipc has no CURVE")
        XCTAssertEqual(try Topology.parse(toml: "transport_security = \"none\"\n[[hosts]]\nranks = 2\n", file: "i.toml").transportSecurity, .none)
        let ipcCurve = parseError("transport_security = \"curve\"\n[[hosts]]\nranks = 2\n", file: "i.toml")
        assertProblem(ipcCurve, .invalidValue, key: "transport_security", reason: "\"curve\" applies to tcp only")
        let bad = parseError("transport_security = \"tls\"\n" + tcp)
        assertProblem(bad, .invalidValue, key: "transport_security", reason: "must be \"curve\" or \"none\" (got \"tls\")")
        let wrongType = parseError("transport_security = true\n" + tcp)
        assertProblem(wrongType, .wrongType, key: "transport_security", reason: "expected a string")
        let typo = parseError("transport_securty = \"none\"\n" + tcp)
        assertProblem(typo, .unknownKey, key: "transport_securty", reason: "did you mean `transport_security`?")
    }

    func testTOMLRoundTrip() throws {
        let original = try Topology.load(path: topologiesFolder + "/two-host-tcp.toml")
        var reparsed = try Topology.parse(toml: original.tomlString(), file: "roundtrip.toml")
        reparsed.sourcePath = original.sourcePath
        XCTAssertEqual(reparsed, original)
    }

    // MARK: cluster spec

    func testClusterSpecPortsForTCP() throws {
        let topology = try Topology.load(path: topologiesFolder + "/two-host-tcp.toml")
        let spec = topology.clusterSpec(jobID: "j", ipcDirectory: "/tmp/titan-j", timeoutSeconds: 30)
        XCTAssertEqual(spec.worldSize, 8)
        XCTAssertEqual(spec.transport, .tcp)
        XCTAssertEqual(spec.jobID, "j")
        XCTAssertEqual(spec.timeoutSeconds, 30)
        XCTAssertEqual(spec.hostOfRank, Array(repeating: "127.0.0.1", count: 4) + Array(repeating: "127.0.0.2", count: 4))
        let step = ClusterSpec.maxGroupsPerRank
        XCTAssertEqual(spec.portOfRank, [29500, 29500 + step, 29500 + 2 * step, 29500 + 3 * step,
                                         29600, 29600 + step, 29600 + 2 * step, 29600 + 3 * step])
        XCTAssertEqual(spec.connectAddress(rank: 5, groupSlot: 2), "tcp://127.0.0.2:\(29600 + step + 2)")
        XCTAssertEqual(spec.bindAddress(rank: 5, groupSlot: 2), "tcp://127.0.0.2:\(29600 + step + 2)", "its own address, not *")
        XCTAssertEqual(spec.transportSecurity, .curve)
        XCTAssertTrue(spec.usesCurve)
        // Every (rank, slot) endpoint of one machine is distinct.
        let endpoints = (0 ..< 8).flatMap { rank in (0 ..< step).map { spec.portOfRank[rank] + $0 } }
        XCTAssertEqual(Set(endpoints).count, endpoints.count)
    }

    func testClusterSpecForIPC() {
        let spec = Topology.local(ranks: 4).clusterSpec(jobID: "abc", ipcDirectory: "/tmp/titan-abc",
                                                        timeoutSeconds: 5)
        XCTAssertEqual(spec.transport, .ipc)
        XCTAssertEqual(spec.worldSize, 4)
        XCTAssertEqual(spec.portOfRank, [])
        XCTAssertEqual(spec.bindAddress(rank: 3, groupSlot: 1), "ipc:///tmp/titan-abc/g1-r3")
    }

    // MARK: errors, one kind at a time

    func testSyntaxError() {
        let error = parseError("name = \"x\"\n[[hosts]\nranks = 2\n", file: "broken.toml")
        assertProblem(error, .syntax, key: nil, reason: "line 2")
        XCTAssertEqual(error?.file, "broken.toml")
    }

    func testMissingFile() {
        XCTAssertThrowsError(try Topology.load(path: "/nonexistent/t.toml")) { error in
            let error = error as? TopologyError
            XCTAssertEqual(error?.file, "/nonexistent/t.toml")
            XCTAssertEqual(error?.problems.first?.kind, .io)
        }
    }

    func testUnknownKeysSuggestTheClosest() {
        let error = parseError("""
            nmae = "x"
            [[hosts]]
            ranks = 2
            [[hosts]]
            rank = 2
            [parallelism]
            expert_paralel_degree = 2
            """)
        assertProblem(error, .unknownKey, key: "nmae", reason: "did you mean `name`?")
        assertProblem(error, .unknownKey, key: "hosts[1].rank", reason: "did you mean `hosts[1].ranks`?")
        assertProblem(error, .unknownKey, key: "parallelism.expert_paralel_degree",
                      reason: "did you mean `parallelism.expert_parallel_degree`?")
    }

    func testWrongTypes() {
        let error = parseError("""
            name = 3
            base_port = "29500"
            [[hosts]]
            ranks = "8"
            [[hosts]]
            ranks = 2.0
            [parallelism]
            data_parallel_shard_degree = true
            """)
        assertProblem(error, .wrongType, key: "name", reason: "expected a string, got integer")
        assertProblem(error, .wrongType, key: "base_port", reason: "expected an integer, got string")
        assertProblem(error, .wrongType, key: "hosts[0].ranks", reason: "expected an integer, got string")
        assertProblem(error, .wrongType, key: "hosts[1].ranks", reason: "got floating-point number")
        assertProblem(error, .wrongType, key: "parallelism.data_parallel_shard_degree", reason: "got bool")

        assertProblem(parseError("hosts = 4\n"), .wrongType, key: "hosts", reason: "array of tables")
        assertProblem(parseError("parallelism = 4\n[[hosts]]\nranks = 1\n"), .wrongType,
                      key: "parallelism", reason: "expected a table")
    }

    func testMissingKeys() {
        assertProblem(parseError("name = \"x\"\n"), .missingKey, key: "hosts", reason: "[[hosts]]")
        assertProblem(parseError("[[hosts]]\nranks = 1\n[[hosts]]\naddress = \"a\"\n"),
                      .missingKey, key: "hosts[1].ranks", reason: "needs `ranks`")
        let tcp = parseError("transport = \"tcp\"\nbase_port = 1000\n[[hosts]]\nranks = 1\n")
        assertProblem(tcp, .missingKey, key: "hosts[0].address", reason: "tcp needs the address")
        let noPort = parseError("transport = \"tcp\"\n[[hosts]]\naddress = \"10.0.0.1\"\nranks = 1\n")
        assertProblem(noPort, .missingKey, key: "hosts[0].base_port", reason: "tcp needs a base_port")
    }

    func testInvalidValues() {
        let ranks = parseError("[[hosts]]\nranks = 4\n[[hosts]]\nranks = 0\n")
        assertProblem(ranks, .invalidValue, key: "hosts[1].ranks", reason: "must be at least 1 (got 0)")
        let transport = parseError("transport = \"udp\"\n[[hosts]]\nranks = 1\n")
        assertProblem(transport, .invalidValue, key: "transport", reason: "must be \"ipc\" or \"tcp\" (got \"udp\")")
        let wildcard = parseError("transport = \"tcp\"\nbase_port = 1000\n[[hosts]]\naddress = \"0.0.0.0\"\nranks = 1\n")
        assertProblem(wildcard, .invalidValue, key: "hosts[0].address", reason: "connect to")
    }

    func testDegreesMustMultiplyToTheWorldSize() {
        let product = parseError("""
            [[hosts]]
            ranks = 8
            [parallelism]
            data_parallel_replicate_degree = 2
            data_parallel_shard_degree = 3
            """)
        assertProblem(product, .degrees, key: "parallelism.data_parallel_shard_degree",
                      reason: "= 6, but the world size is 8")
        let ep = parseError("""
            [[hosts]]
            ranks = 8
            [parallelism]
            data_parallel_replicate_degree = 2
            expert_parallel_degree = 3
            """)
        assertProblem(ep, .degrees, key: "parallelism.expert_parallel_degree",
                      reason: "3 does not divide data_parallel_shard_degree (4)")
        let fill = parseError("[[hosts]]\nranks = 6\n[parallelism]\ndata_parallel_replicate_degree = 4\n")
        assertProblem(fill, .degrees, key: "parallelism.data_parallel_replicate_degree",
                      reason: "does not divide the world size 6")
        let negative = parseError("[[hosts]]\nranks = 2\n[parallelism]\ndata_parallel_shard_degree = -2\n")
        assertProblem(negative, .degrees, key: "parallelism.data_parallel_shard_degree", reason: "or -1")
    }

    func testDegreesResolveAgainstTheWorld() throws {
        let topology = try Topology.parse(toml: """
            [[hosts]]
            ranks = 4
            [[hosts]]
            ranks = 4
            [parallelism]
            data_parallel_replicate_degree = 2
            expert_parallel_degree = 2
            """, file: "t.toml")
        XCTAssertEqual(try topology.parallelism.dims(worldSize: 8, numExperts: nil).shard, 4)
        // Overrides (e.g. --parallelism.*) are checked by the same rules, outside a file.
        var overridden = topology.parallelism
        overridden.expert_parallel_degree = 8
        XCTAssertThrowsError(try overridden.dims(worldSize: 8, numExperts: nil)) { error in
            guard case ParallelError.invalidDegrees(let key, _)? = error as? ParallelError else { return XCTFail("\(error)") }
            XCTAssertEqual(key, "parallelism.expert_parallel_degree")
        }
    }

    func testPortClashes() {
        let sameAddress = parseError("""
            transport = "tcp"
            base_port = 30000
            [[hosts]]
            address = "10.0.0.5"
            ranks = 2
            [[hosts]]
            address = "10.0.0.5"
            ranks = 2
            base_port = 30016
            """)
        assertProblem(sameAddress, .ports, key: "hosts[1].base_port",
                      reason: "overlap ports 30000...30031 of hosts[0]")
        assertProblem(sameAddress, .ports, key: "hosts[1].base_port", reason: "30032 or later")

        // Loopback aliases are one machine (ranks bind every interface).
        let loopback = parseError("""
            transport = "tcp"
            base_port = 30000
            [[hosts]]
            address = "127.0.0.1"
            ranks = 1
            [[hosts]]
            address = "127.0.0.2"
            ranks = 1
            """)
        assertProblem(loopback, .ports, key: "base_port", reason: "on the same machine")

        let range = parseError("transport = \"tcp\"\nbase_port = 70000\n[[hosts]]\naddress = \"a\"\nranks = 1\n")
        assertProblem(range, .ports, key: "base_port", reason: "must be in 1...65535 (got 70000)")
        let pastEnd = parseError("transport = \"tcp\"\n[[hosts]]\naddress = \"a\"\nranks = 4\nbase_port = 65500\n")
        assertProblem(pastEnd, .ports, key: "hosts[0].base_port", reason: "past 65535")
    }

    func testDifferentMachinesMayShareAPort() throws {
        let topology = try Topology.parse(toml: """
            transport = "tcp"
            base_port = 30000
            [[hosts]]
            address = "10.0.0.1"
            ranks = 4
            [[hosts]]
            address = "10.0.0.2"
            ranks = 4
            """, file: "t.toml")
        XCTAssertEqual(topology.clusterSpec(jobID: "j", ipcDirectory: "/tmp", timeoutSeconds: 1).portOfRank[4], 30000)
    }

    func testAllProblemsAreReportedAtOnce() {
        let error = parseError("bogus = 1\n[[hosts]]\nranks = \"x\"\n", file: "many.toml")
        XCTAssertEqual(error?.problems.count, 2)
        XCTAssertTrue(error?.description.contains("2 problems") ?? false)
    }

    // MARK: [network]

    func testNetworkTableAndHostOverridesResolvePerHost() throws {
        let topology = try Topology.parse(toml: """
            [[hosts]]
            ranks = 2
            [[hosts]]
            ranks = 2
            inter_host_gbit = 0.8
            intra_host_latency_us = 3
            [network]
            inter_host_gbit = 1.6
            inter_host_latency_us = 20
            intra_host_gbit = 100
            """, file: "net.toml")
        let spec = topology.clusterSpec(jobID: "j", ipcDirectory: "/tmp", timeoutSeconds: 1)
        XCTAssertEqual(spec.hostIndexOfRank, [0, 0, 1, 1], "ipc hosts are told apart by index, not address")
        XCTAssertTrue(spec.crossesHosts(1, 2))
        XCTAssertFalse(spec.crossesHosts(2, 3))
        let hosts = try XCTUnwrap(spec.network).hosts
        XCTAssertEqual(hosts[0].interHost, NetworkSpec.Link(bytesPerSecond: 0.2e9, latencyNanoseconds: 20_000))
        XCTAssertEqual(hosts[0].intraHost, NetworkSpec.Link(bytesPerSecond: 12.5e9, latencyNanoseconds: 0))
        XCTAssertEqual(hosts[1].interHost, NetworkSpec.Link(bytesPerSecond: 0.1e9, latencyNanoseconds: 20_000), "the slow host's own rate")
        XCTAssertEqual(hosts[1].intraHost, NetworkSpec.Link(bytesPerSecond: 12.5e9, latencyNanoseconds: 3_000))
        // What the launcher writes for its ranks reads back the same.
        var reparsed = try Topology.parse(toml: topology.tomlString(), file: "net.toml")
        reparsed.name = topology.name
        XCTAssertEqual(reparsed, topology)
    }

    func testATopologyWithoutNetworkHasNoSimulatedNetwork() throws {
        let spec = Topology.local(ranks: 4).clusterSpec(jobID: "j", ipcDirectory: "/tmp", timeoutSeconds: 1)
        XCTAssertNil(spec.network)
        XCTAssertEqual(spec.hostIndexOfRank, [0, 0, 0, 0])
        XCTAssertNil(try Topology.load(path: topologiesFolder + "/two-host-tcp.toml").networkSpec)
        XCTAssertFalse(Topology.local(ranks: 2).tomlString().contains("network"))
        let shaped = try Topology.load(path: topologiesFolder + "/two-host-shaped.toml")
        XCTAssertEqual(shaped.networkSpec?.hosts.map(\.interHost.bytesPerSecond), [0.2e9, 0.2e9])
    }

    func testBadNetworkValuesAreRejectedNamingTheKey() {
        let hosts = "[[hosts]]\nranks = 1\n"
        assertProblem(parseError(hosts + "[network]\ninter_host_gbit = -1\n"), .invalidValue, key: "network.inter_host_gbit",
                      reason: "must be a positive number of Gbit/s (got -1.0)")
        assertProblem(parseError(hosts + "[network]\nintra_host_gbit = 0\n"), .invalidValue, key: "network.intra_host_gbit",
                      reason: "leave the key out for an unlimited link")
        assertProblem(parseError(hosts + "[network]\ninter_host_latency_us = -5\n"), .invalidValue,
                      key: "network.inter_host_latency_us", reason: "microseconds >= 0")
        assertProblem(parseError(hosts + "[network]\ninter_host_gbit = \"fast\"\n"), .wrongType, key: "network.inter_host_gbit",
                      reason: "expected a number, got string")
        assertProblem(parseError(hosts + "[network]\ninter_host_gbps = 10\n"), .unknownKey, key: "network.inter_host_gbps",
                      reason: "did you mean `network.inter_host_gbit`?")
        assertProblem(parseError("network = 10\n" + hosts), .wrongType, key: "network", reason: "expected a table")
        assertProblem(parseError("[[hosts]]\nranks = 1\ninter_host_latency_us = -1\n"), .invalidValue,
                      key: "hosts[0].inter_host_latency_us", reason: "microseconds >= 0")
        assertProblem(parseError("[[hosts]]\nranks = 1\nintra_host_gbit = true\n"), .wrongType,
                      key: "hosts[0].intra_host_gbit", reason: "expected a number")
    }
}
