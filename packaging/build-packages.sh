#!/usr/bin/env bash
# Builds torpor's .deb (dpkg-deb) and .rpm (rpmbuild) from an existing release build.
#
#   packaging/build-packages.sh [RELEASE_DIR [OUT_DIR]]     (defaults: target/release target/package)
#
# Needs: the four release artifacts (torpor, torpor-restore, libtorpor_agent.so,
# libtorpor_spank.so), a `torpor` that has the `completions` and `man` verbs, the Slurm
# headers the plugin was built against (libslurm-dev), dpkg-deb, rpmbuild (Debian's `rpm`),
# binutils. Nothing here needs root.
#
# The package version names the Slurm it was built against: the SPANK plugin only loads into
# that Slurm major.minor (docs/design/0002-slurm-version-policy.md), so
#   deb: torpor_<version>-<rev>+slurm<slurm>_<arch>.deb   Depends: slurm-wlm-basic-plugins (>= <slurm>), (<< <major.minor+1>~)
#   rpm: torpor-<version>-<rev>.slurm<slurm>.<arch>.rpm   Requires: slurm >= <slurm>, slurm < <major.minor+1>
# Binaries are stripped; their debug info goes to OUT_DIR/debug/usr/lib/debug/.build-id/
# (copy it to /usr/lib/debug on a host to debug a crash; it is not packaged).
set -euo pipefail
umask 022

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REL=$(realpath -m "${1:-$ROOT/target/release}")
OUT=$(realpath -m "${2:-$ROOT/target/package}")
REV=${TORPOR_PKG_REVISION:-1}
MAINTAINER=${TORPOR_PKG_MAINTAINER:-torpor maintainers <torpor@example.invalid>}

die() { echo "build-packages: $*" >&2; exit 1; }
for t in dpkg-deb dpkg-query rpm rpmbuild objcopy objdump nm strip readelf gzip md5sum; do
    command -v "$t" >/dev/null || die "$t not found (scripts/setup.sh installs rpm and binutils)"
done
LDCONFIG=$(command -v ldconfig || echo /sbin/ldconfig)   # /sbin is not on users' PATH

# ---- inputs -------------------------------------------------------------------------------
ARTIFACTS=(torpor torpor-restore libtorpor_agent.so libtorpor_spank.so)
for a in "${ARTIFACTS[@]}"; do
    [ -f "$REL/$a" ] || die "$REL/$a missing: run \`cargo build --release --workspace\` (or \`make build\`) first"
done
TORPOR="$REL/torpor"
"$TORPOR" completions bash >/dev/null 2>&1 \
    || die "$TORPOR has no \`completions\` verb (needs the CLI of issue 5): cannot generate shell completions"
"$TORPOR" man --help >/dev/null 2>&1 \
    || die "$TORPOR has no \`man\` verb (needs the CLI of issue 5): cannot generate torpor(1)"

VERSION=$(awk -F'"' '/^\[workspace.package\]/{w=1} w && /^version *=/{print $2; exit}' "$ROOT/Cargo.toml")
[ -n "$VERSION" ] || die "no [workspace.package] version in Cargo.toml"
BIN_VERSION=$("$TORPOR" --version | awk '{print $2}')
[ "$BIN_VERSION" = "$VERSION" ] || die "$TORPOR says version $BIN_VERSION, Cargo.toml says $VERSION: rebuild"

# The Slurm the plugin was built against: the headers' version, which must be the installed
# libslurm-dev's (the plugin's plugin_version is SLURM_VERSION_NUMBER from those headers).
SLURM_PKG_VERSION=$(dpkg-query -W -f='${Version}' libslurm-dev 2>/dev/null) \
    || die "libslurm-dev is not installed: the plugin is built against its headers"
SLURM=${SLURM_PKG_VERSION#*:}; SLURM=${SLURM%%-*}; SLURM=${SLURM%%+*}
HDR=/usr/include/slurm/slurm_version.h
HDR_NUMBER=$(awk '$1 == "#define" && $2 == "SLURM_VERSION_NUMBER" {print $3}' "$HDR" 2>/dev/null || true)
HDR_VERSION=
if [[ "$HDR_NUMBER" =~ ^0x[0-9a-fA-F]+$ ]]; then
    HDR_VERSION=$(printf '%d.%02d.%d' $((HDR_NUMBER >> 16)) $(((HDR_NUMBER >> 8) & 255)) $((HDR_NUMBER & 255)))
fi
[ "$HDR_VERSION" = "$SLURM" ] \
    || die "libslurm-dev $SLURM_PKG_VERSION but $HDR says ${HDR_VERSION:-nothing}: which Slurm was the plugin built against?"
[[ "$SLURM" =~ ^([0-9]+)\.([0-9]+)\.[0-9]+$ ]] || die "unexpected Slurm version $SLURM"
SLURM_MAJOR=${BASH_REMATCH[1]} SLURM_MINOR=${BASH_REMATCH[2]}
# Slurm's major.minor the plugin loads into, and the first one it does not (22.05 -> 22.06:
# a bound, not necessarily a real release).
SLURM_NEXT=$(printf '%s.%02d' "$SLURM_MAJOR" $((10#$SLURM_MINOR + 1)))
# The plugin's own plugin_version (SLURM_VERSION_NUMBER of the headers it was compiled with,
# little-endian u32) must be this Slurm's major.minor: Slurm refuses to load it otherwise.
addr=$(nm -D --defined-only "$REL/libtorpor_spank.so" | awk '$3 == "plugin_version" {print $1}')
[ -n "$addr" ] || die "$REL/libtorpor_spank.so exports no plugin_version"
bytes=$(objdump -s -j .rodata --start-address=0x$addr --stop-address=$((0x$addr + 4)) \
        "$REL/libtorpor_spank.so" | awk 'NF >= 2 && $1 ~ /^[0-9a-f]+$/ {v=$2} END {print v}')
[[ "$bytes" =~ ^[0-9a-f]{8}$ ]] || die "cannot read plugin_version from $REL/libtorpor_spank.so"
PLUGIN_VERSION=$((0x${bytes:6:2}${bytes:4:2}${bytes:2:2}${bytes:0:2}))
PLUGIN_MM=$(printf '%d.%02d' $((PLUGIN_VERSION >> 16)) $(((PLUGIN_VERSION >> 8) & 255)))
[ "$PLUGIN_MM" = "$SLURM_MAJOR.$SLURM_MINOR" ] \
    || die "$REL/libtorpor_spank.so was built for Slurm $PLUGIN_MM, the installed headers are $SLURM: rebuild it"

DEB_ARCH=$(dpkg --print-architecture)
RPM_ARCH=$(rpm --eval '%{_arch}')
DEB_VERSION="$VERSION-$REV+slurm$SLURM"
RPM_RELEASE="$REV.slurm$SLURM"

# Only what this script writes is removed (OUT may be any directory).
mkdir -p "$OUT"
rm -rf "$OUT/work" "$OUT/debug" "$OUT"/torpor_*.deb "$OUT"/torpor-*.rpm
WORK="$OUT/work"
STAGE="$WORK/stage"      # the installed tree, shared by both formats
DEBUG="$OUT/debug"

# ---- the installed tree ---------------------------------------------------------------------
install_stripped() {     # SRC DEST MODE
    local src=$1 dst=$2 mode=$3 id
    install -D -m "$mode" "$src" "$dst"
    id=$(readelf -n "$dst" | awk '/Build ID:/{print $3}')
    if [ -n "$id" ]; then
        mkdir -p "$DEBUG/usr/lib/debug/.build-id/${id:0:2}"
        objcopy --only-keep-debug "$dst" "$DEBUG/usr/lib/debug/.build-id/${id:0:2}/${id:2}.debug"
    fi
    if [[ "$dst" == *.so ]]; then
        strip --strip-unneeded --remove-section=.comment --remove-section=.note "$dst"
    else
        strip --strip-all --remove-section=.comment "$dst"
    fi
    chmod "$mode" "$dst"
}

LIBDIR=usr/lib/torpor
install_stripped "$REL/torpor" "$STAGE/usr/bin/torpor" 0755
install_stripped "$REL/torpor-restore" "$STAGE/$LIBDIR/torpor-restore" 0755
install_stripped "$REL/libtorpor_agent.so" "$STAGE/$LIBDIR/libtorpor_agent.so" 0644
install_stripped "$REL/libtorpor_spank.so" "$STAGE/$LIBDIR/libtorpor_spank.so" 0644

# Slurm's plugstack snippet: the site's configuration (conffile / %config(noreplace)).
install -D -m 0644 "$ROOT/packaging/plugstack.conf.d/torpor.conf" \
    "$STAGE/etc/slurm/plugstack.conf.d/torpor.conf"

# Manual pages: torpor(1) and torpor-VERB(1) from the CLI's own parser, torpor-spank(8) by hand.
MAN="$WORK/man"
mkdir -p "$MAN"
"$TORPOR" man "$MAN" >/dev/null
[ -f "$MAN/torpor.1" ] || die "\`torpor man\` wrote no torpor.1"
mkdir -p "$STAGE/usr/share/man/man1" "$STAGE/usr/share/man/man8"
for page in "$MAN"/*.1; do
    gzip -9n -c "$page" > "$STAGE/usr/share/man/man1/$(basename "$page").gz"
done
gzip -9n -c "$ROOT/packaging/man/torpor-spank.8" > "$STAGE/usr/share/man/man8/torpor-spank.8.gz"
chmod 0644 "$STAGE"/usr/share/man/man*/*

# Shell completions, generated by the CLI.
completion() {           # SHELL DEST
    install -d -m 0755 "$(dirname "$2")"
    "$TORPOR" completions "$1" > "$2"
    [ -s "$2" ] || die "\`torpor completions $1\` printed nothing"
    chmod 0644 "$2"
}
completion bash "$STAGE/usr/share/bash-completion/completions/torpor"
completion fish "$STAGE/usr/share/fish/vendor_completions.d/torpor.fish"
completion zsh "$WORK/_torpor"   # zsh's directory differs between Debian and RPM distros

# Documentation.
DOC=usr/share/doc/torpor
install -d -m 0755 "$STAGE/$DOC"
for d in README.md docs/admin-guide.md docs/user-guide.md docs/admin-plugstack.md \
         docs/slurm.md docs/engine.md docs/image-format.md; do
    [ -f "$ROOT/$d" ] || die "$d missing"
    install -m 0644 "$ROOT/$d" "$STAGE/$DOC/$(basename "$d")"
done
install -m 0644 "$ROOT/packaging/copyright" "$STAGE/$DOC/copyright"

# Sizes and dependencies, from what is really in the tree.
# Shared libraries the binaries need -> the packages that ship them; libc6 versioned by the
# newest GLIBC_ symbol version referenced.
ELFS=("$STAGE/usr/bin/torpor" "$STAGE/$LIBDIR/torpor-restore" "$STAGE/$LIBDIR/libtorpor_agent.so" "$STAGE/$LIBDIR/libtorpor_spank.so")
GLIBC_MIN=$(objdump -T "${ELFS[@]}" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
declare -A SHLIB_PKGS=()
for lib in $(readelf -d "${ELFS[@]}" 2>/dev/null | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | sort -u); do
    case "$lib" in ld-linux*) continue ;; esac
    # (awk reads to the end: an early exit would SIGPIPE the producer and, under pipefail,
    # fail the assignment at random.)
    path=$("$LDCONFIG" -p | awk -v l="$lib" '$1 == l && /x86-64|64bit|AArch64/ && !p {p = $NF} END {print p}')
    [ -n "$path" ] || die "cannot find $lib (needed by a torpor binary)"
    pkg=$(dpkg-query -S "$(realpath "$path")" 2>/dev/null | awk -F: 'NR == 1 {print $1}') \
        || pkg=$(dpkg-query -S "$path" 2>/dev/null | awk -F: 'NR == 1 {print $1}') \
        || die "no package ships $path"
    [ -n "$pkg" ] || die "no package ships $path"
    SHLIB_PKGS[$pkg]=1
done
DEPENDS=""
for pkg in $(printf '%s\n' "${!SHLIB_PKGS[@]}" | sort); do
    if [ "$pkg" = libc6 ]; then DEPENDS+="libc6 (>= $GLIBC_MIN), "; else DEPENDS+="$pkg, "; fi
done
# slurm-wlm-basic-plugins: on every Debian submit host (slurm-client) and node (slurmd), and
# it owns /etc/slurm/plugstack.conf, which includes plugstack.conf.d/*.conf.
DEPENDS+="slurm-wlm-basic-plugins (>= $SLURM), slurm-wlm-basic-plugins (<< $SLURM_NEXT~)"

DESCRIPTION_SHORT="transparent checkpoint/restart for Slurm batch jobs"
read -r -d '' DESCRIPTION_LONG <<EOF || true
torpor checkpoints the unmodified programs of Slurm jobs submitted with
--checkpoint=<interval> (a SPANK plugin preloads an agent into them) and
resumes each from its newest image when the job is requeued, preempted or
loses its node. No kernel module, no CRIU.
.
This build's SPANK plugin is for Slurm $SLURM_MAJOR.$SLURM_MINOR (built against $SLURM).
EOF

# ---- .deb -----------------------------------------------------------------------------------
DEBROOT="$WORK/deb"
cp -a "$STAGE" "$DEBROOT"
install -D -m 0644 "$WORK/_torpor" "$DEBROOT/usr/share/zsh/vendor-completions/_torpor"
{
    echo "torpor ($DEB_VERSION) unstable; urgency=medium"
    echo
    echo "  * Built by packaging/build-packages.sh against Slurm $SLURM_PKG_VERSION."
    echo
    echo " -- $MAINTAINER  $(date -R -u -d "@${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)}")"
} | gzip -9n > "$DEBROOT/$DOC/changelog.Debian.gz"
chmod 0644 "$DEBROOT/$DOC/changelog.Debian.gz"
install -d -m 0755 "$DEBROOT/DEBIAN"
INSTALLED_KB=$(du -sk --apparent-size "$DEBROOT" | cut -f1)
{
    echo "Package: torpor"
    echo "Version: $DEB_VERSION"
    echo "Architecture: $DEB_ARCH"
    echo "Maintainer: $MAINTAINER"
    echo "Installed-Size: $INSTALLED_KB"
    echo "Depends: $DEPENDS"
    echo "Section: admin"
    echo "Priority: optional"
    echo "Homepage: https://example.invalid/torpor"
    echo "Description: $DESCRIPTION_SHORT"
    sed 's/^/ /' <<<"$DESCRIPTION_LONG"
} > "$DEBROOT/DEBIAN/control"
echo /etc/slurm/plugstack.conf.d/torpor.conf > "$DEBROOT/DEBIAN/conffiles"
# postrm disables the `required` plugstack line when the plugin is removed; postinst re-enables it.
install -m 0755 "$ROOT/packaging/deb/postinst" "$ROOT/packaging/deb/postrm" "$DEBROOT/DEBIAN/"
(cd "$DEBROOT" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
    > "$DEBROOT/DEBIAN/md5sums"
chmod 0644 "$DEBROOT"/DEBIAN/{control,conffiles,md5sums}
find "$DEBROOT" -type d -exec chmod 0755 {} +
DEB="$OUT/torpor_${DEB_VERSION}_${DEB_ARCH}.deb"
dpkg-deb --root-owner-group -Zxz --build "$DEBROOT" "$DEB" >/dev/null

# ---- .rpm -----------------------------------------------------------------------------------
RPMROOT="$WORK/rpmroot"
cp -a "$STAGE" "$RPMROOT"
install -D -m 0644 "$WORK/_torpor" "$RPMROOT/usr/share/zsh/site-functions/_torpor"
TOP="$WORK/rpmbuild"
mkdir -p "$TOP"/{SPECS,BUILD,RPMS,SOURCES,SRPMS}
SPEC="$TOP/SPECS/torpor.spec"
{
    cat <<EOF
# Generated by packaging/build-packages.sh: packages the staged tree as is.
%global debug_package %{nil}
%global __os_install_post %{nil}
%global _build_id_links none
Name:           torpor
Version:        $VERSION
Release:        $RPM_RELEASE
Summary:        Transparent checkpoint/restart for Slurm batch jobs
License:        Apache-2.0
URL:            https://example.invalid/torpor
Requires:       slurm >= $SLURM
Requires:       slurm < $SLURM_NEXT

%description
$(sed 's/^\.$//' <<<"$DESCRIPTION_LONG")

%install
cp -a "$RPMROOT/." %{buildroot}/

%files
%defattr(-,root,root,-)
%dir /usr/lib/torpor
%dir /etc/slurm/plugstack.conf.d
%dir /usr/share/doc/torpor
%config(noreplace) /etc/slurm/plugstack.conf.d/torpor.conf
EOF
    (cd "$RPMROOT" && find . -type f ! -path './etc/*' -printf '/%P\n' | sort) | while read -r f; do
        case "$f" in /usr/share/doc/*) echo "%doc $f" ;; *) echo "$f" ;; esac
    done
} > "$SPEC"
rpmbuild -bb --quiet --nodeps \
    --define "_topdir $TOP" \
    --define "_rpmdir $OUT" \
    --define "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm" \
    --buildroot "$TOP/BUILDROOT" \
    "$SPEC" >/dev/null
RPM="$OUT/torpor-$VERSION-$RPM_RELEASE.$RPM_ARCH.rpm"
[ -f "$RPM" ] || die "rpmbuild did not produce $RPM"

rm -rf "$WORK"
echo "build-packages: $DEB"
echo "build-packages: $RPM"
echo "build-packages: debug info in $DEBUG"
