import ArgumentParser
import Foundation
import Train

/// `titan report DUMP`: DUMP/report.html, one self-contained page with the run's charts (see RunReport). A finished
/// run writes it too; this rewrites it from the folder at any time, also while the run goes on.
struct ReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Write DUMP/report.html: the run's config, mesh and charts (loss, throughput, MFU, communication, memory, expert load) in one file.")

    @Argument(help: "The run folder (--job.dump_folder).")
    var dump: String

    func run() throws {
        do {
            print("titan report: \(try RunReport.write(dumpFolder: dump))")
        } catch {
            FileHandle.standardError.write(Data("titan report: \(error)\n".utf8))
            throw ExitCode(2)
        }
    }
}
