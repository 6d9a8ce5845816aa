// Slurm's compact lists, as its environment gives them to every task of a step:
//   hostlists     SLURM_JOB_NODELIST / SLURM_STEP_NODELIST   node[01-04,07],gpu[1-2]  → node01 … node04, node07, gpu1, gpu2
//   task counts   SLURM_TASKS_PER_NODE / …_STEP_…            4(x2),3                  → 4, 4, 3
// (Slurm's hostlist.c and its man pages define them; `scontrol show hostnames` expands a hostlist the same way.)

import Foundation

public struct SlurmSyntaxError: Error, CustomStringConvertible, Equatable {
    public var text: String
    public var reason: String
    public var description: String { "\(reason) in \"\(text)\"" }
}

public enum SlurmSyntax {
    /// Expands a hostlist: comma-separated names, each with any number of bracketed range lists (`rack[1-2]-n[1-4]` is
    /// their product, the rightmost varying fastest). A range keeps the width of its zero-padded lower bound
    /// (`[08-10]` → 08, 09, 10). Names stay in the order written.
    public static func expandHostlist(_ text: String) throws -> [String] {
        var hosts: [String] = []
        for item in try splitTopLevel(text) {
            guard !item.isEmpty else { throw SlurmSyntaxError(text: text, reason: "empty host name") }
            hosts += try expandName(item, in: text)
        }
        guard !hosts.isEmpty else { throw SlurmSyntaxError(text: text, reason: "no host") }
        return hosts
    }

    /// Expands a task-count list: comma-separated counts, each optionally repeated as `N(xR)`.
    public static func expandTaskCounts(_ text: String) throws -> [Int] {
        var counts: [Int] = []
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            let part = item.trimmingCharacters(in: .whitespaces)
            var count = Substring(part), repeats = 1
            if let open = part.firstIndex(of: "(") {
                guard part.hasSuffix(")"), part[part.index(after: open)...].hasPrefix("x"),
                      let r = Int(part[part.index(open, offsetBy: 2) ..< part.index(before: part.endIndex)]), r >= 1 else {
                    throw SlurmSyntaxError(text: text, reason: "\"\(part)\" is not N or N(xR)")
                }
                count = part[..<open]
                repeats = r
            }
            guard let n = Int(count), n >= 0 else {
                throw SlurmSyntaxError(text: text, reason: "\"\(part)\" is not a task count (N or N(xR))")
            }
            counts += Array(repeating: n, count: repeats)
        }
        return counts
    }

    /// Splits at the commas outside brackets.
    private static func splitTopLevel(_ text: String) throws -> [String] {
        var items: [String] = [], current = "", depth = 0
        for c in text {
            switch c {
            case "[": depth += 1; current.append(c)
            case "]":
                depth -= 1
                guard depth >= 0 else { throw SlurmSyntaxError(text: text, reason: "unbalanced \"]\"") }
                current.append(c)
            case "," where depth == 0: items.append(current); current = ""
            default: current.append(c)
            }
        }
        guard depth == 0 else { throw SlurmSyntaxError(text: text, reason: "unclosed \"[\"") }
        items.append(current)
        return items.map { $0.trimmingCharacters(in: .whitespaces) }
    }

    /// One name with its bracket groups expanded (cartesian product, left to right).
    private static func expandName(_ name: String, in text: String) throws -> [String] {
        guard let open = name.firstIndex(of: "[") else {
            guard !name.contains("]") else { throw SlurmSyntaxError(text: text, reason: "unbalanced \"]\"") }
            return [name]
        }
        guard let close = name[open...].firstIndex(of: "]") else { throw SlurmSyntaxError(text: text, reason: "unclosed \"[\"") }
        let prefix = String(name[..<open])
        let ranges = name[name.index(after: open) ..< close]
        guard !ranges.contains("[") else { throw SlurmSyntaxError(text: text, reason: "nested \"[\"") }
        let rest = try expandName(String(name[name.index(after: close)...]), in: text)
        var values: [String] = []
        for range in ranges.split(separator: ",", omittingEmptySubsequences: false) {
            let bounds = range.split(separator: "-", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            guard (1...2).contains(bounds.count), bounds.allSatisfy({ !$0.isEmpty && $0.allSatisfy(\.isASCII) && $0.allSatisfy(\.isNumber) }),
                  let lo = Int(bounds[0]), let hi = Int(bounds[bounds.count - 1]), lo <= hi else {
                throw SlurmSyntaxError(text: text, reason: "\"[\(ranges)]\" is not a list of numbers and ranges such as [01-04,07]")
            }
            guard hi - lo < 1 << 20 else { throw SlurmSyntaxError(text: text, reason: "range \(range) is too large") }
            let width = bounds[0].count
            for n in lo...hi {
                let digits = String(n)
                values.append(String(repeating: "0", count: max(0, width - digits.count)) + digits)
            }
        }
        return values.flatMap { value in rest.map { prefix + value + $0 } }
    }
}
