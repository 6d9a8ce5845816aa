import ArgumentParser
import Foundation

@main
struct Titan: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "titan",
        abstract: "SwiftTitan: train Mixture-of-Experts models on a simulated cluster of ZeroMQ-connected ranks.",
        subcommands: [Launch.self, TrainCommand.self, Collectives.self, Bench.self, ConvertCommand.self, BenchGemm.self, GenerateCommand.self,
                      ReportCommand.self])
}
