#!/usr/bin/env bash
# Builds the Debian package and the npm tarball of mpconvert from the built tree (npm run build first):
#   dist-pkg/mpconvert_<version>_<arch>.deb   the application in /usr/lib/mpconvert, /usr/bin/mpconvert, the
#                                             systemd units, commented configs in /etc/mpconvert, docs
#   dist-pkg/mpconvert-<version>.tgz          'npm install -g ./mpconvert-<version>.tgz' gives the command
#                                             (dependencies bundled: no registry needed)
# The .deb's architecture is that of the koffi native module in node_modules (koffi is the FFI library; its
# prebuilt module is per architecture), so a package built on x86-64 is _amd64. Build on the target
# architecture (or in an emulated container of it) for another one.
# Environment: OUT (output directory, default dist-pkg), SKIP_NPM_PACK=1 (the .deb only).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${OUT:-$root/dist-pkg}
mkdir -p "$out"
out=$(cd "$out" && pwd)

for tool in dpkg-deb node npm; do
  command -v "$tool" >/dev/null || { echo "build-deb.sh: $tool is needed" >&2; exit 1; }
done
if [ ! -f dist/src/cli/entry.js ]; then echo "build-deb.sh: dist/ is missing: run 'npm run build' first" >&2; exit 1; fi

version=$(node -p 'require("./package.json").version')

# Which architecture the native FFI module in node_modules is for.
native=$(cd node_modules/@koromix 2>/dev/null && ls -d koffi-linux-* 2>/dev/null | head -1 || true)
case "${native#koffi-linux-}" in
  x64) arch=amd64 ;;
  arm64) arch=arm64 ;;
  arm) arch=armhf ;;
  ia32) arch=i386 ;;
  riscv64) arch=riscv64 ;;
  ppc64) arch=ppc64el ;;
  loong64) arch=loong64 ;;
  *) echo "build-deb.sh: no Linux koffi native module in node_modules/@koromix (run 'npm ci')" >&2; exit 1 ;;
esac

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg=$stage/deb
app=$pkg/usr/lib/mpconvert
mkdir -p "$app/dist" "$pkg/usr/bin" "$pkg/lib/systemd/system" "$pkg/etc/mpconvert" "$pkg/usr/share/doc/mpconvert" "$pkg/DEBIAN"

# The application: the compiled sources (no tests, no source maps), package.json, and the production
# dependencies exactly as the lock file installed them (npm ls lists every one, nested ones included).
(cd dist && find src -name '*.js' -print0 | xargs -0 cp --parents -t "$app/dist")
cp package.json "$app/"
npm ls --omit=dev --all --parseable 2>/dev/null | tail -n +2 | while read -r dir; do
  rel=${dir#"$root"/}
  mkdir -p "$app/$(dirname "$rel")"
  cp -rL "$dir" "$app/$rel"
done
# Only this architecture's native module is there; drop what a runtime never reads.
find "$app/node_modules" \( -name '*.md' -o -name '*.ts' -o -name '*.map' -o -name 'CHANGELOG*' \) -type f -delete
rm -rf "$app/node_modules/koffi/doc" "$app/node_modules/koffi/vendor"

install -m 0755 packaging/mpconvert.sh "$pkg/usr/bin/mpconvert"
install -m 0644 packaging/systemd/mpconvert-cpe.service packaging/systemd/mpconvert-concentrator.service "$pkg/lib/systemd/system/"
install -m 0640 packaging/etc/cpe.yaml packaging/etc/concentrator.yaml "$pkg/etc/mpconvert/"
install -m 0644 README.md docs/service.md docs/cpe.md docs/concentrator.md docs/doctor.md "$pkg/usr/share/doc/mpconvert/"
[ -f docs/deploy.md ] && install -m 0644 docs/deploy.md "$pkg/usr/share/doc/mpconvert/"
[ -f docs/operator.md ] && install -m 0644 docs/operator.md "$pkg/usr/share/doc/mpconvert/"
# DHCP provisioning of the concentrators (docs/operator.md): the hooks of ISC dhclient and dhcpcd, which leave the
# leases' concentrators in /run/mpconvert-dhcp for the CPE, and the client-side option declarations to include.
mkdir -p "$pkg/etc/dhcp/dhclient-exit-hooks.d" "$pkg/usr/lib/dhcpcd/dhcpcd-hooks" "$pkg/usr/share/doc/mpconvert/examples"
install -m 0644 packaging/dhcp/dhclient-exit-hook "$pkg/etc/dhcp/dhclient-exit-hooks.d/mpconvert"
install -m 0644 packaging/dhcp/dhcpcd-hook "$pkg/usr/lib/dhcpcd/dhcpcd-hooks/60-mpconvert"
install -m 0644 packaging/dhcp/dhclient-mpconvert.conf packaging/dhcp/dhclient6-mpconvert.conf packaging/dhcp/dhcpcd-mpconvert.conf "$pkg/usr/share/doc/mpconvert/examples/"
cat > "$pkg/usr/share/doc/mpconvert/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: mpconvert

Files: *
License: Apache-2.0
 On Debian systems the full text of the Apache License 2.0 is in /usr/share/common-licenses/Apache-2.0.
 The bundled Node.js modules in /usr/lib/mpconvert/node_modules carry their own licenses (MIT, ISC,
 Apache-2.0), each in its directory.
COPYRIGHT

for f in postinst prerm postrm; do install -m 0755 "packaging/debian/$f" "$pkg/DEBIAN/$f"; done
printf '/etc/mpconvert/cpe.yaml\n/etc/mpconvert/concentrator.yaml\n/etc/dhcp/dhclient-exit-hooks.d/mpconvert\n' > "$pkg/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
cat > "$pkg/DEBIAN/control" <<CONTROL
Package: mpconvert
Version: $version
Architecture: $arch
Maintainer: mpconvert developers <mpconvert@localhost>
Installed-Size: $size
Depends: nodejs (>= 20), nftables, iproute2, procps, adduser
Recommends: systemd
Section: net
Priority: optional
Description: Network-Assisted MPTCP conversion points (CPE and concentrator)
 mpconvert converts a LAN's TCP connections into Multipath TCP connections
 that use every uplink of a router (the CPE), and converts them back to TCP
 towards the servers (the concentrator), over Linux kernel MPTCP.
 .
 Both daemons run as systemd services as the user mpconvert with
 CAP_NET_ADMIN only. Node.js 20 or newer is needed: Debian 12's nodejs is 18,
 install nodejs from NodeSource (deb.nodesource.com/node_20.x) there.
CONTROL
deb=$out/mpconvert_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
echo "$deb"

if [ "${SKIP_NPM_PACK:-}" != 1 ]; then
  # The npm tarball, with the production dependencies inside (bundleDependencies, the same tree as the
  # .deb's): 'npm install -g' needs no registry and installs exactly the tested versions. Like the .deb it
  # holds the koffi native module of this architecture.
  npmdir=$stage/npm
  mkdir -p "$npmdir/dist"
  cp -r README.md docs packaging "$npmdir/"
  (cd dist && find src -name '*.js' -print0 | xargs -0 cp --parents -t "$npmdir/dist")
  cp -r "$app/node_modules" "$npmdir/node_modules"
  node -e '
    const fs = require("fs");
    const p = JSON.parse(fs.readFileSync("package.json", "utf8"));
    p.bundleDependencies = Object.keys(p.dependencies);
    delete p.devDependencies;
    delete p.scripts;
    fs.writeFileSync(process.argv[1], JSON.stringify(p, null, 2) + "\n");
  ' "$npmdir/package.json"
  tgz=$(cd "$npmdir" && npm pack --silent --pack-destination "$out")
  echo "$out/$tgz"
fi
