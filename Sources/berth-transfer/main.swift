// berth-transfer: berthd's transfer worker. berthd starts one per import1 transfer, from the
// folder its own executable is in, with the status pipe as fd 3 and the data as fd 4
// (TransferWorker in the Transfer module has the command line). Not for running by hand.
import Transfer
import TransferJobs

TransferWorker.main(arguments: Array(CommandLine.arguments.dropFirst()))
