import Foundation

/// The median of `samples` (the mean of the middle two for an even count).
func median(_ samples: [Double]) -> Double? {
    guard !samples.isEmpty else { return nil }
    let sorted = samples.sorted()
    let mid = sorted.count / 2
    return sorted.count % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

/// Every outcome recorded for one item and one daemon (or reference): one per run.
struct Samples {
    var outcomes: [Outcome] = []

    /// The median of the measured runs; a failure or n/a if any run had one (never hidden).
    var summary: Outcome? {
        if let bad = outcomes.first(where: { $0.value == nil }) { return bad }
        guard let m = median(outcomes.compactMap(\.value)), let first = outcomes.first else { return nil }
        if case .kibibytes = first { return .kibibytes(Int(m)) }
        return .seconds(m)
    }

    /// The median, with the spread of the runs where there were several: "0.658 s (3 runs: 0.61–0.70)".
    var text: String {
        guard let summary else { return "–" }
        let values = outcomes.compactMap(\.value)
        guard values.count > 1, case .seconds = summary, let lo = values.min(), let hi = values.max() else {
            return summary.description
        }
        return "\(summary) (\(values.count) runs: " + String(format: "%.3f–%.3f", lo, hi) + ")"
    }
}

/// Prints the results file as a Markdown table: each figure for both daemons (the median of its
/// runs, with their spread), the ratio Berth/systemd of the medians, the physical reference
/// where there is one, and whether the target is met.
func printTable(_ file: String) throws {
    let text = try String(contentsOfFile: file, encoding: .utf8)
    var order: [String] = []
    var rows: [String: [String: Samples]] = [:]
    var refs: [String: (label: String, samples: Samples)] = [:]
    for line in text.split(separator: "\n") {
        let f = line.split(separator: "\t", maxSplits: 2, omittingEmptySubsequences: false).map(String.init)
        guard f.count == 3 else { continue }
        if rows[f[0]] == nil { order.append(f[0]); rows[f[0]] = [:] }
        if f[1].hasPrefix("ref:") {
            refs[f[0], default: (String(f[1].dropFirst(4)), Samples())].samples.outcomes.append(Outcome(field: f[2]))
        } else {
            rows[f[0], default: [:]][f[1], default: Samples()].outcomes.append(Outcome(field: f[2]))
        }
    }
    print("| item | Berth | systemd 252 | Berth/systemd | reference | Berth/reference | target |")
    print("|---|---|---|---|---|---|---|")
    for item in order {
        let b = rows[item]?["berth"], s = rows[item]?["systemd"]
        let bv = b?.summary?.value, sv = s?.summary?.value
        var ratio = "–", refText = "–", refRatio = "–", target = "–"
        if let bv, let sv, sv > 0 { ratio = String(format: "%.2f", bv / sv) }
        let rv = refs[item]?.samples.summary?.value
        if let ref = refs[item] {
            refText = "\(ref.label): \(ref.samples.text)"
            if let bv, let rv, rv > 0 { refRatio = String(format: "%.2f", bv / rv) }
        }
        let isTime: Bool = if case .seconds? = s?.summary { true } else if case .seconds? = b?.summary { true } else { false }
        if isTime && !item.hasSuffix(cpuSuffix) {
            var met: Bool? = nil
            if let bv, let sv, sv > 0 { met = bv / sv <= 0.8 }
            if item.hasPrefix("ImportTar"), let bv, let rv, rv > 0 {
                met = (met ?? true) && bv / rv <= 1.2
            }
            target = met.map { $0 ? "met" : "**not met**" } ?? "not measured"
        }
        print("| \(item) | \(b?.text ?? "–") | \(s?.text ?? "–") | \(ratio) | \(refText) | \(refRatio) | \(target) |")
    }
}

