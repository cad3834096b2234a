import ArgumentParser
import Bus
import Foundation
import Services

/// `berthctl list-transfers`: import1's running transfers (Manager.ListTransfers).
public struct ListTransfers: ParsableCommand {
    public static let configuration = CommandConfiguration(commandName: "list-transfers",
                                                           abstract: "List running import/export/pull transfers.")

    @OptionGroup public var global: GlobalOptions

    public init() {}

    public func run() throws {
        let client = try TransferClient(global)
        let reply = try client.call(.listTransfers)
        let rows = (reply.first?.arrayValue ?? []).compactMap { $0.structureValue }
        let transfers = rows.compactMap { r -> TransferRow? in
            guard r.count == 6, let id = r[0].uint64Value, let type = r[1].stringValue, let remote = r[2].stringValue,
                  let local = r[3].stringValue, let progress = r[4].doubleValue else { return nil }
            return TransferRow(id: UInt32(truncatingIfNeeded: id), type: type, remote: remote, local: local,
                               progress: progress >= 0 ? progress : nil)
        }
        if global.json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(transfers), as: UTF8.self))
            return
        }
        if transfers.isEmpty {
            print("No transfers.")
            return
        }
        print("ID  PERCENT  TYPE        LOCAL            REMOTE")
        for t in transfers {
            let percent = t.progress.map { String(Int(($0 * 100).rounded(.down))) + "%" } ?? "n/a"
            print("\(t.id)".padding(toLength: 4, withPad: " ", startingAt: 0) + percent.padding(toLength: 9, withPad: " ", startingAt: 0)
                  + t.type.padding(toLength: 12, withPad: " ", startingAt: 0) + t.local.padding(toLength: 17, withPad: " ", startingAt: 0)
                  + t.remote)
        }
    }
}

/// One row of ListTransfers' `a(usssdo)`; progress nil while unknown (importd's -DBL_MAX).
public struct TransferRow: Codable, Sendable, Equatable {
    public var id: UInt32
    public var type: String
    public var remote: String
    public var local: String
    public var progress: Double?
}

/// `berthctl cancel-transfer ID…`: Manager.CancelTransfer for each id.
public struct CancelTransfer: ParsableCommand {
    public static let configuration = CommandConfiguration(commandName: "cancel-transfer", abstract: "Cancel running transfers.")

    @OptionGroup public var global: GlobalOptions

    @Argument(help: "Transfer ids, as list-transfers shows them.")
    public var ids: [UInt32]

    public init() {}

    public func run() throws {
        let client = try TransferClient(global)
        var failed = false
        for id in ids {
            do {
                _ = try client.call(.cancelTransfer, [.uint32(id)])
            } catch {
                FileHandle.standardError.write(Data("cannot cancel transfer \(id): \(error.message)\n".utf8))
                failed = true
            }
        }
        if failed { throw ExitCode(1) }
    }
}

/// A blocking client of import1's manager object for the transfer verbs.
struct TransferClient {
    let client: BusClient

    init(_ global: GlobalOptions) throws {
        do {
            client = try BusClient(address: global.busAddress)
        } catch {
            throw ValidationError("cannot reach the bus: \(error)")
        }
    }

    func call(_ method: Import1Manager.Method, _ arguments: [BusValue] = []) throws(BusError) -> [BusValue] {
        try client.call(destination: ServiceKind.import1.busName, path: ServiceKind.import1.managerPath,
                        interface: Import1Manager.name, member: method.rawValue, arguments)
    }
}
