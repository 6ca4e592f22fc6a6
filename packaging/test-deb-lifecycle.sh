#!/usr/bin/env bash
# Installs, removes and reinstalls the .deb on this machine (root) and checks what an admin
# relies on: the files land where the docs say, an edit of the plugstack snippet survives,
# removal disables the `required` plugstack line (a line naming a missing plugin would make
# every sbatch/srun fail), reinstalling enables it again with the edit. Leaves the package
# installed, as `dpkg -i` would.
#
#   packaging/test-deb-lifecycle.sh target/package/torpor_*.deb
set -euo pipefail
DEB=${1:?usage: $0 PACKAGE.deb}
CONF=/etc/slurm/plugstack.conf.d/torpor.conf
PLUGIN=/usr/lib/torpor/libtorpor_spank.so
fails=0
check() {                # DESCRIPTION COMMAND...
    local what=$1; shift
    if "$@"; then echo "  ok: $what"; else echo "  FAILED: $what"; fails=$((fails + 1)); fi
}
status() { dpkg-query -W -f='${Status}' torpor 2>/dev/null || true; }
[ "$(id -u)" -eq 0 ] || { echo "$0: needs root (dpkg -i)" >&2; exit 1; }

echo "deb lifecycle: $DEB"
dpkg -i "$DEB" >/dev/null
check "installed" test "$(status)" = "install ok installed"
check "plugin installed" test -f "$PLUGIN"
check "plugstack snippet installed" grep -q "^required $PLUGIN " "$CONF"
check "Debian's plugstack.conf includes plugstack.conf.d/*.conf" \
    grep -Eq '^include /etc/slurm/plugstack.conf.d/\*\.conf' /etc/slurm/plugstack.conf
ORIG=$(cat "$CONF")
echo "# local edit $$" >> "$CONF"

dpkg -r torpor >/dev/null
check "removed (config files kept)" test "$(status)" = "deinstall ok config-files"
check "plugin gone" test ! -e "$PLUGIN"
check "snippet no longer matches plugstack.conf.d/*.conf" test ! -e "$CONF"
check "snippet kept as $CONF.disabled with the edit" grep -q "^# local edit $$" "$CONF.disabled"

dpkg -i "$DEB" >/dev/null
check "reinstalled" test "$(status)" = "install ok installed"
check "snippet enabled again with the edit" grep -q "^# local edit $$" "$CONF"
check "no disabled copy left" test ! -e "$CONF.disabled"
printf '%s\n' "$ORIG" > "$CONF"

dpkg --purge torpor >/dev/null
check "purged" test -z "$(status | grep -v 'not-installed' || true)"
check "purge removes the snippet" test ! -e "$CONF" -a ! -e "$CONF.disabled"

dpkg -i "$DEB" >/dev/null
check "installed again from scratch" test "$(status)" = "install ok installed"
check "fresh snippet" cmp -s "$CONF" <(printf '%s\n' "$ORIG")

if [ "$fails" -ne 0 ]; then
    echo "deb lifecycle: $fails check(s) failed" >&2
    exit 1
fi
echo "deb lifecycle: ok"
