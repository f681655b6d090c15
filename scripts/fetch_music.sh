#!/usr/bin/env bash
# Fetch real music for the demo catalog and the tests from Debian's game-music packages
# (`apt-get download`, no installation), keeping each package's copyright file beside its tracks.
# Result: $MUSECHAT_MUSIC_DIR/<package>/*.ogg + <package>/copyright  (default ~/.cache/musechat/music)
set -euo pipefail
CACHE="${MUSECHAT_CACHE:-$HOME/.cache/musechat}"
MUSIC="${MUSECHAT_MUSIC_DIR:-$CACHE/music}"
DEBS="$CACHE/debs"
# package -> folder inside the package that holds its music
declare -A MUSIC_PATHS=(
    [wesnoth-1.16-music]="usr/share/games/wesnoth/1.16/data/core/music"
    [extremetuxracer-data]="usr/share/games/etr/music"
    [supertux-data]="usr/share/games/supertux2/music"
    [hedgewars-data]="usr/share/games/hedgewars/Data/Music"
)
mkdir -p "$DEBS" "$MUSIC"
for pkg in "${!MUSIC_PATHS[@]}"; do
    [ -f "$MUSIC/$pkg/.complete" ] && continue
    if ! ls "$DEBS/${pkg}"_*.deb >/dev/null 2>&1; then
        echo "[music] downloading $pkg from Debian"
        (cd "$DEBS" && (apt-get download "$pkg" 2>/dev/null || { apt-get update -qq && apt-get download "$pkg"; }))
    fi
    tmp="$(mktemp -d)"
    dpkg-deb -x "$DEBS/${pkg}"_*.deb "$tmp"
    rm -rf "$MUSIC/$pkg" && mkdir -p "$MUSIC/$pkg"
    find "$tmp/${MUSIC_PATHS[$pkg]}" -name '*.ogg' -size +100k -exec cp {} "$MUSIC/$pkg/" \;
    cp "$tmp/usr/share/doc/$pkg/copyright" "$MUSIC/$pkg/copyright"
    rm -rf "$tmp"
    touch "$MUSIC/$pkg/.complete"
    echo "[music] $pkg: $(ls "$MUSIC/$pkg"/*.ogg | wc -l) tracks in $MUSIC/$pkg"
done
