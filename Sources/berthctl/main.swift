// berthctl: thin entry point; the commands live in BerthCLI.
import BerthCLI

Berthctl.main()
