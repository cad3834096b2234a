// berth-inspect: the child berthd starts to probe (libblkid) and mount a raw image for reading in
// a mount namespace of its own, with the image as fd 3, a hold pipe as fd 4 and an answer pipe
// as fd 5 (InspectorAnswer in the InspectProtocol module has the conversation). Not for running
// by hand.
import ImageProbe

Inspector.main(arguments: Array(CommandLine.arguments.dropFirst()))
