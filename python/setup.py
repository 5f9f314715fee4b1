"""Builds the icecache package with the libicecache.so of this checkout's build inside it, so
an installed package needs no ICECACHE_LIB. The library is the first of: $ICECACHE_LIB,
$ICECACHE_BUILD_DIR/runtime/libicecache.so, ../build/runtime/libicecache.so. Without one the
package still installs and looks for the library when it is first used (icecache.find_library
says where, and what to do)."""
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

here = os.path.dirname(os.path.abspath(__file__))


def built_library():
    cands = [os.environ.get("ICECACHE_LIB")]
    if os.environ.get("ICECACHE_BUILD_DIR"):
        cands.append(os.path.join(os.environ["ICECACHE_BUILD_DIR"], "runtime", "libicecache.so"))
    cands.append(os.path.join(here, "..", "build", "runtime", "libicecache.so"))
    for c in cands:
        if c and os.path.exists(c):
            return os.path.realpath(c)
    return None


class BuildPy(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install finds the checkout's build itself
        lib = built_library()
        if lib:
            shutil.copyfile(lib, os.path.join(self.build_lib, "icecache", "libicecache.so"))
            print("icecache: bundling %s" % lib)
        else:
            print("icecache: WARNING: no libicecache.so found (build it first: meson setup "
                  "build && ninja -C build, then reinstall); the package will look for it "
                  "at run time ($ICECACHE_LIB, the system's library path)")


class BinaryDistribution(Distribution):
    """The wheel holds a shared library: tag it for this platform."""

    def has_ext_modules(self):
        return True


setup(cmdclass={"build_py": BuildPy}, distclass=BinaryDistribution)
