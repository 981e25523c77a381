#!/usr/bin/env bash
# The patched crates in patches/ (used through [patch.crates-io] in Cargo.toml) are nothing but
# the published crate, trimmed by one mechanical rule, plus the crate's KURSRELAY.diff. This
# script proves it, and is the one way to change or update them.
#
#   scripts/patches.sh check [DIR]        every copy in DIR (default patches/) equals
#                                         published + trim + KURSRELAY.diff; exit 1 with the
#                                         differences if not
#   scripts/patches.sh diff CRATE         after editing patches/CRATE/src: regenerate its
#                                         KURSRELAY.diff against the published crate
#   scripts/patches.sh update CRATE VER   move patches/CRATE to published version VER and
#                                         re-apply KURSRELAY.diff (exit 1 if it no longer
#                                         applies: then edit by hand and run `diff`)
#
# The trim: keep Cargo.toml, README.md, LICENSE* and src/; drop the manifest's [[example]],
# [[test]], [[bench]] and [dev-dependencies*] tables (their files are not kept). The published
# crate comes from cargo's registry cache, or is fetched from crates.io into it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# Files of ours beside the crate's own, never part of the comparison.
OURS=(KURSRELAY-PATCH.md KURSRELAY.diff UPSTREAM-PR.md)

die() { echo "patches.sh: $*" >&2; exit 1; }

# The version a copy is of, from its manifest's [package] table.
version_of() {
  awk -F'"' '/^\[/ { pkg = ($0 == "[package]") } pkg && /^version = / { print $2; exit }' "$1/Cargo.toml"
}

# Path of the published CRATE-VER .crate file, fetched by cargo if it is not cached.
crate_file() {
  local crate=$1 ver=$2 found
  found=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$crate-$ver.crate" 2>/dev/null | head -n1 || true)
  if [ -z "$found" ]; then
    local tmp
    tmp=$(mktemp -d)
    mkdir "$tmp/src" && : >"$tmp/src/lib.rs"
    printf '[package]\nname = "fetch-published"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\n%s = "=%s"\n' \
      "$crate" "$ver" >"$tmp/Cargo.toml"
    cargo fetch --quiet --manifest-path "$tmp/Cargo.toml" || die "could not fetch $crate $ver from crates.io"
    rm -rf "$tmp"
    found=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$crate-$ver.crate" | head -n1)
  fi
  echo "$found"
}

# The published crate, trimmed, into directory $3.
published_trimmed() {
  local crate=$1 ver=$2 out=$3 tmp
  tmp=$(mktemp -d)
  tar -xzf "$(crate_file "$crate" "$ver")" -C "$tmp"
  local src="$tmp/$crate-$ver"
  mkdir -p "$out"
  cp -r "$src/src" "$out/src"
  for f in README.md "$src"/LICENSE*; do
    [ -e "$src/$(basename "$f")" ] && cp "$src/$(basename "$f")" "$out/"
  done
  awk '/^\[/ { skip = ($0 ~ /^\[\[(example|test|bench)\]\]$/ || $0 ~ /^\[dev-dependencies/) }
       !skip' "$src/Cargo.toml" >"$out/Cargo.toml"
  rm -rf "$tmp"
}

# published + trim + KURSRELAY.diff for the copy in $1, into directory $2.
expected() {
  local copy=$1 out=$2 crate
  crate=$(basename "$copy")
  published_trimmed "$crate" "$(version_of "$copy")" "$out"
  patch --quiet --forward -p1 -d "$out" <"$copy/KURSRELAY.diff" >/dev/null ||
    die "$crate: KURSRELAY.diff does not apply to the published crate"
}

# Compares two trees, leaving out our own files; prints the differences.
compare() {
  local excl=()
  for f in "${OURS[@]}"; do excl+=(-x "$f"); done
  diff -r "${excl[@]}" "$1" "$2"
}

cmd=${1:-check}
case "$cmd" in
  check)
    dir=${2:-$root/patches}
    status=0
    for copy in "$dir"/*/; do
      copy=${copy%/}
      want=$(mktemp -d)
      expected "$copy" "$want/crate"
      if compare "$want/crate" "$copy" >"$want/differences"; then
        echo "$(basename "$copy") $(version_of "$copy"): published + KURSRELAY.diff, nothing else"
      else
        echo "$(basename "$copy"): differs from published + KURSRELAY.diff:" >&2
        cat "$want/differences" >&2
        status=1
      fi
      rm -rf "$want"
    done
    exit "$status"
    ;;
  diff)
    crate=${2:?crate name}
    copy="$root/patches/$crate"
    base=$(mktemp -d)
    published_trimmed "$crate" "$(version_of "$copy")" "$base/a"
    mkdir "$base/b"
    (cd "$copy" && cp -r src Cargo.toml "$base/b/" && for f in README.md LICENSE*; do [ -e "$f" ] && cp "$f" "$base/b/"; done) || true
    # Without the timestamps diff puts after each path: the diff changes only when the code does.
    (cd "$base" && diff -ruN a b | sed -E 's/^(---|\+\+\+) ([^\t]+)\t.*/\1 \2/' >"$copy/KURSRELAY.diff") || true
    rm -rf "$base"
    echo "patches/$crate/KURSRELAY.diff: $(grep -c '^[-+][^-+]' "$copy/KURSRELAY.diff") changed lines"
    ;;
  update)
    crate=${2:?crate name}
    ver=${3:?version}
    copy="$root/patches/$crate"
    new=$(mktemp -d)
    published_trimmed "$crate" "$ver" "$new/crate"
    patch --forward -p1 -d "$new/crate" <"$copy/KURSRELAY.diff" ||
      die "KURSRELAY.diff does not apply to $crate $ver: apply it by hand in patches/$crate, then run: scripts/patches.sh diff $crate"
    for f in "${OURS[@]}"; do [ -e "$copy/$f" ] && cp "$copy/$f" "$new/crate/"; done
    rm -rf "$copy" && mv "$new/crate" "$copy" && rm -rf "$new"
    echo "patches/$crate is now $crate $ver + KURSRELAY.diff; update the version in Cargo.lock (cargo update -p $crate) and run the tests its KURSRELAY-PATCH.md names"
    ;;
  *) die "unknown command $cmd (check, diff CRATE, update CRATE VERSION)" ;;
esac
