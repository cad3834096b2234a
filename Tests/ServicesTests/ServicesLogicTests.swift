import Bus
import Glibc
import Linux
import PoolAPI
import Portable
import Testing
import Transfer
@testable import Services

/// What the bus harnesses decide without a bus: object paths, argument checks, the error each
/// typed failure becomes on the wire (names and messages as systemd 252's daemons send them).
@Suite struct ObjectPathTests {
    @Test func imageAndMachinePathsAreEscapedAsSdBusDoes() {
        #expect(Machine1Service.imagePath("fedora").rawValue == "/org/freedesktop/machine1/image/fedora")
        #expect(Machine1Service.imagePath(".host").rawValue == "/org/freedesktop/machine1/image/_2ehost")
        #expect(Machine1Service.imagePath("a b").rawValue == "/org/freedesktop/machine1/image/a_20b")
        #expect(Machine1Service.machinePath("c-1").rawValue == "/org/freedesktop/machine1/machine/c_2d1")
        #expect(Portable1Service.imagePath("app_1").rawValue == "/org/freedesktop/portable1/image/app_5f1")
    }

    @Test func aTransferHasOnePathAndOnlyThatPathNamesIt() {
        #expect(Import1Service.transferPath(7).rawValue == "/org/freedesktop/import1/transfer/_7")
        #expect(Import1Service.transferID(Import1Service.transferPath(4_000_000_000)) == 4_000_000_000)
        for other in ["/org/freedesktop/import1/transfer/_07", "/org/freedesktop/import1/transfer/_0x7",
                      "/org/freedesktop/import1/transfer/7", "/org/freedesktop/import1/transfer/_",
                      "/org/freedesktop/import1/transfer/_7/x", "/org/freedesktop/import1/transfer/_99999999999",
                      "/org/freedesktop/machine1/image/_7"] {
            #expect(Import1Service.transferID(ObjectPath(other)) == nil, "\(other)")
        }
    }
}

@Suite struct ArgumentCheckTests {
    @Test func imageNamesAreCheckedWithEachDaemonsWords() throws {
        for bad in ["../x", "a/b", ".#x", "", "x\u{0}y"] {
            let machine = #expect(throws: BusError.self) { try Machine1Errors.validate(bad) }
            #expect(machine == BusError.invalidArgs("Image name '\(bad)' is invalid."))
            let local = #expect(throws: BusError.self) { try Import1Service.checkedLocalName(bad) }
            #expect(local == BusError.invalidArgs("Local name \(bad) is invalid"))
            let localEx = #expect(throws: BusError.self) { try Import1Service.checkedLocalNameEx(bad) }
            #expect(localEx == BusError.invalidArgs("Local image name \(bad) is invalid"))
        }
        // Names are file names, not host names (DESIGN.md).
        for good in ["a b", "..x", String(repeating: "n", count: 70), ".hidden"] {
            try Machine1Errors.validate(good)
            #expect(try Import1Service.checkedLocalName(good) == good)
        }
    }

    @Test func portableTakesANameOrANormalizedAbsolutePath() throws {
        for good in ["app", "/var/lib/portables/app.raw", "/"] { try Portable1Errors.validateNameOrPath(good) }
        for bad in ["a/b", "/a/../b", "/a/./b", "../x"] {
            let error = #expect(throws: BusError.self) { try Portable1Errors.validateNameOrPath(bad) }
            #expect(error == BusError.invalidArgs("Image name '\(bad)' is not valid or not a valid path."))
        }
        #expect(!Portable1Errors.isNormalized("/" + String(repeating: "a", count: 4096)))
    }

    @Test func importClassesAndFlagsAreImportdsOnly() throws {
        #expect(try Import1Service.imageClass("machine") == .machine)
        #expect(try Import1Service.imageClass("portable") == .portable)
        for bad in ["", "Machine", "host"] {
            let error = #expect(throws: BusError.self) { try Import1Service.imageClass(bad) }
            #expect(error == BusError.invalidArgs("Image class '\(bad)' not known"))
        }
        #expect(try Import1Service.flags(0b11, for: .importTar) == [.force, .readOnly])
        #expect(try Import1Service.flags(0b111, for: .pullRaw) == [.force, .readOnly, .keepDownload])
        let keep = #expect(throws: BusError.self) { try Import1Service.flags(0b100, for: .importRaw) }
        #expect(keep == BusError.invalidArgs("Flags 0x4 invalid"))
        let export = #expect(throws: BusError.self) { try Import1Service.flags(1, for: .exportTar) }
        #expect(export == BusError.invalidArgs("Flags 0x1 invalid"))
    }

    @Test func machineEnvironmentsAreShellAssignmentsWithoutRepeats() {
        #expect(Machine1Service.validEnvironment(["A=1", "B_2=x=y", "_=", "lower=ok"]) != nil)
        #expect(Machine1Service.validEnvironment([]) == [])
        for bad in [["A=1", "A=2"], ["1A=x"], ["NOEQUALS"], ["=x"], ["A-B=x"], ["A=\u{0}"]] {
            #expect(Machine1Service.validEnvironment(bad) == nil, "\(bad)")
        }
    }

    @Test func bindMountPathsAreAbsoluteAndNormalized() {
        for good in ["/", "/a", "/a/b", "/a/b/"] { #expect(Machine1Service.isNormalizedAbsolute(good), "\(good)") }
        for bad in ["", "a", "/a//b", "/a/./b", "/a/../b", "/..", "/a\u{0}"] {
            #expect(!Machine1Service.isNormalizedAbsolute(bad), "\(bad)")
        }
    }

    @Test func aControlGroupNamesItsUnitAsSystemdReadsIt() {
        #expect(Machine1Service.unit(ofGroup: "/system.slice/x.service/payload") == "x.service")
        #expect(Machine1Service.unit(ofGroup: "/machine.slice/machine-c1.scope") == "machine-c1.scope")
        #expect(Machine1Service.unit(ofGroup: "/berth/c1") == "c1", "no unit: the last component")
        #expect(Machine1Service.unit(ofGroup: "/") == "")
        #expect(Machine1Service.isUnitName("a.timer"))
        #expect(!Machine1Service.isUnitName(".service"))
        #expect(!Machine1Service.isUnitName("a.unknown"))
    }
}

@Suite struct ErrorTableTests {
    @Test func poolErrorsBecomeMachinedsReplies() {
        let cases: [(PoolError.Code, String, String)] = [
            (.noSuchImage, "org.freedesktop.machine1.NoSuchImage", "No image 'img' known"),
            (.imageExists, BusError.Name.fileExists, String(cString: strerror(EEXIST))),
            (.readOnly, "System.Error.EROFS", String(cString: strerror(EROFS))),
            (.notSupported, BusError.Name.notSupported, String(cString: strerror(EOPNOTSUPP))),
            (.busy, "System.Error.EBUSY", String(cString: strerror(EBUSY))),
            (.noSpace, "System.Error.ENOSPC", String(cString: strerror(ENOSPC))),
            (.quotaExceeded, "System.Error.EDQUOT", String(cString: strerror(EDQUOT))),
            (.invalidName, BusError.Name.invalidArgs, "Image name 'img' is invalid."),
        ]
        for (code, name, message) in cases {
            let reply = Machine1Errors.translate(PoolError(code, "berth's own words"), name: "img")
            #expect(reply == BusError(name: name, message: message), "\(code)")
        }
    }

    @Test func anImageWithNothingToInspectIsENOPKGForMetadata() {
        let reply = Machine1Errors.translate(PoolError(.invalidImage, "no partitions"), name: "disk", metadata: true)
        #expect(reply.name == "System.Error.ENOPKG")
        #expect(reply.message == "Failed to read image metadata: " + String(cString: strerror(ENOPKG)))
    }

    @Test func theTableMapsEveryNamedCodeAndLetsErrnoDecideTheRest() {
        #expect(ErrorMapping.busError(PoolError(.noSuchImage, "x")).name == ErrorMapping.Name.noSuchImage)
        #expect(ErrorMapping.busError(PoolError(.invalidArgument, "x")).name == BusError.Name.invalidArgs)
        #expect(ErrorMapping.busError(PoolError(.cancelled, "x")).name == "System.Error.ECANCELED")
        #expect(ErrorMapping.busError(PoolError(.invalidImage, "x")).name == "System.Error.EBADMSG")
        // No code of its own: the errno of the failed call names it, with Berth's message.
        let system = PoolError.from(SystemCallError("openat", .EACCES, subject: "/x"), "cannot open")
        #expect(ErrorMapping.busError(system) == BusError(name: "System.Error.EACCES", message: system.description))
        #expect(ErrorMapping.busError(PoolError(.system, "no cause")).name == "System.Error.EIO")
        let passed = BusError.accessDenied("no")
        #expect(ErrorMapping.busError(passed) == passed, "a BusError goes out as it is")
    }

    @Test func sdBusErrnoNamesAreSdBusOwn() {
        #expect(Machine1Service.sdBusErrno(.ENOENT) == BusError(name: BusError.Name.fileNotFound, message: "File not found"))
        #expect(Machine1Service.sdBusErrno(.EPERM) == BusError(name: BusError.Name.accessDenied, message: "Access denied"))
        #expect(Machine1Service.sdBusErrno(.EINVAL, "bad") == BusError(name: BusError.Name.invalidArgs, message: "bad"))
        #expect(Machine1Service.sdBusErrno(Errno(ENOBUFS)).name == BusError.Name.limitsExceeded)
        #expect(Machine1Service.sdBusErrno(.ENOSPC) == BusError(name: "System.Error.ENOSPC", message: String(cString: strerror(ENOSPC))))
    }

    @Test func portabledSaysENOENTForAMissingPathAndNoSuchImageForAName() {
        #expect(Portable1Errors.translate(PoolError(.noSuchImage, "x"), name: "app")
                == BusError(name: "org.freedesktop.portable1.NoSuchImage", message: "No image 'app' found."))
        #expect(Portable1Errors.translate(PoolError(.noSuchImage, "x"), name: "/srv/app.raw").name == "System.Error.ENOENT")
        #expect(Portable1Errors.translate(PoolError(.invalidName, "x"), name: "a/b")
                == BusError.invalidArgs("Image name 'a/b' is not valid or not a valid path."))
    }
}

@Suite struct ProgressThrottleTests {
    @Test func aWholePercentGoesOutAtMostEveryIntervalAndTheLastIsFlushed() {
        var throttle = ProgressThrottle()
        let t0 = ContinuousClock.now
        #expect(throttle.offer(0.10, now: t0) == 0.10)
        #expect(throttle.offer(0.105, now: t0 + .milliseconds(300)) == nil, "same whole percent")
        #expect(throttle.offer(0.20, now: t0 + .milliseconds(310)) == 0.20)
        #expect(throttle.offer(0.30, now: t0 + .milliseconds(320)) == nil, "too soon: held back")
        #expect(throttle.flush() == 0.30)
        #expect(throttle.flush() == nil, "once")
    }
}
