import Foundation
import XCTest
@testable import Cluster

/// The launchers' agreement through a shared folder, with launchers as threads of this test.
final class RendezvousTests: XCTestCase {
    func folder() -> String {
        let path = NSTemporaryDirectory() + "titan-rdzv-\(UUID().uuidString.prefix(8))"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }

    func testAFailedHostStopsTheOthers() throws {
        let f = folder()
        let a = try Rendezvous(folder: f, jobID: "j", node: 0, timeout: 5)
        let b = try Rendezvous(folder: f, jobID: "j", node: 1, timeout: 5)
        XCTAssertNil(a.peerFailure(hosts: [0, 1]), "both running")
        XCTAssertNil(a.peerFailure(hosts: [0, 1, 2]), "host 2 has not joined yet: its ranks are awaited, not failed")
        b.publish(phase: .failed, reason: "rank 3 failed: exit code 1")
        XCTAssertEqual(a.peerFailure(hosts: [0, 1]), "host 1 failed: rank 3 failed: exit code 1")
    }

    func testASilentHostIsLost() throws {
        let f = folder()
        let a = try Rendezvous(folder: f, jobID: "j", node: 0, timeout: 0.3)
        _ = try Rendezvous(folder: f, jobID: "j", node: 1, timeout: 0.3)
        XCTAssertNil(a.peerFailure(hosts: [0, 1]))
        usleep(500_000)   // host 1 writes no more heartbeats
        XCTAssertEqual(a.peerFailure(hosts: [0, 1]), "host 1 is lost: its launcher has not written for over 0.3 s")
        a.publish(phase: .failed, reason: "x")
        XCTAssertEqual(try a.awaitStopped(hosts: [0, 1]), [1])
        XCTAssertThrowsError(try a.nextAttempt(hosts: [0, 1], lost: [1], elastic: false, log: { _ in })) { e in
            XCTAssertTrue("\(e)".contains("host(s) 1 lost") && "\(e)".contains("--elastic"), "\(e)")
        }
    }

    /// After a failure every surviving launcher gets the same plan: the hosts that are left, chosen by the lowest.
    func testSurvivorsAgreeOnTheNextAttempt() throws {
        let f = folder()
        let launchers = try (0..<3).map { try Rendezvous(folder: f, jobID: "j", node: $0, timeout: 1) }
        launchers[2].publish(phase: .failed, reason: "host 2 goes away")   // and then writes nothing more
        usleep(1_200_000)
        for node in [0, 1] { launchers[node].publish(phase: .stopped) }
        final class Plans: @unchecked Sendable { var byNode: [Int: [Int]] = [:] }   // written under `lock`
        let plans = Plans(), lock = NSLock()
        let done = DispatchGroup()
        for node in [1, 0] {   // the non-leader first: it waits for the leader's plan
            done.enter()
            Thread {
                let lost = (try? launchers[node].awaitStopped(hosts: [0, 1, 2])) ?? []
                let plan = try? launchers[node].nextAttempt(hosts: [0, 1, 2], lost: lost, elastic: true, log: { _ in })
                lock.lock(); plans.byNode[node] = plan; lock.unlock()
                done.leave()
            }.start()
        }
        done.wait()
        XCTAssertEqual(plans.byNode[0], [0, 1])
        XCTAssertEqual(plans.byNode[1], [0, 1])
        XCTAssertEqual(launchers[0].state.attempt, 1)
        XCTAssertEqual(launchers[1].state.phase, .running)
    }

    /// Files of an earlier run of the same job id are not taken for this run's.
    func testAnEarlierRunsFilesAreIgnored() throws {
        let f = folder()
        let old = try Rendezvous(folder: f, jobID: "j", node: 1, timeout: 5)
        old.publish(phase: .failed, reason: "last week")
        usleep(2_100_000)
        let a = try Rendezvous(folder: f, jobID: "j", node: 0, timeout: 5)
        XCTAssertNil(a.peerFailure(hosts: [0, 1]))
    }
}
