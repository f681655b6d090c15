#!/usr/bin/env bash
# Fetch real music for the demo catalog and the tests from Debian's game-music packages
# (`apt-get download`, no installation), keeping each package's copyright file beside its tracks.
# Result: $MUSECHAT_MUSIC_DIR/<package>/*.ogg + <package>/copyright  (default ~/.cache/musechat/music)
#
# --heldout: instead, a second set of packages in other styles that the demo, the tests and the
# defaults were never tuned on (metal/rock songs, electronic/ambient, adventure-game score), for
# benchmarks/bench_steering.py. Their folder structure below the music folder is kept (Frets on
# Fire ships one folder per song holding song.ogg and guitar.ogg).
# Result: $MUSECHAT_HELDOUT_DIR/<package>/... (default ~/.cache/musechat/music-heldout)
set -euo pipefail
CACHE="${MUSECHAT_CACHE:-$HOME/.cache/musechat}"
DEBS="$CACHE/debs"
# package -> folder inside the package that holds its music
declare -A MUSIC_PATHS
KEEP_TREE=0  # 1: keep the folders below the music folder (--heldout); 0: flat, as the demo always was
if [ "${1:-}" = "--heldout" ]; then
    KEEP_TREE=1
    MUSIC="${MUSECHAT_HELDOUT_DIR:-$CACHE/music-heldout}"
    MUSIC_PATHS=(
        [asc-music]="usr/share/games/asc/music"
        [drascula-music]="usr/share/scummvm/drascula/audio"
        [fretsonfire-songs-muldjord]="usr/share/games/fretsonfire/data/songs/muldjord"
        [fretsonfire-songs-sectoid]="usr/share/games/fretsonfire/data/songs/sectoid"
        [singularity-music]="usr/share/games/singularity/music"
    )
elif [ -n "${1:-}" ]; then
    echo "usage: $0 [--heldout]" >&2
    exit 2
else
    MUSIC="${MUSECHAT_MUSIC_DIR:-$CACHE/music}"
    MUSIC_PATHS=(
        [wesnoth-1.16-music]="usr/share/games/wesnoth/1.16/data/core/music"
        [extremetuxracer-data]="usr/share/games/etr/music"
        [supertux-data]="usr/share/games/supertux2/music"
        [hedgewars-data]="usr/share/games/hedgewars/Data/Music"
    )
fi
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
    if [ "$KEEP_TREE" = 1 ]; then
        (cd "$tmp/${MUSIC_PATHS[$pkg]}" && find . -type f \( -name '*.ogg' -o -name '*.mp3' \) -size +100k -exec cp --parents {} "$MUSIC/$pkg/" \;)
    else
        find "$tmp/${MUSIC_PATHS[$pkg]}" -name '*.ogg' -size +100k -exec cp {} "$MUSIC/$pkg/" \;
    fi
    cp "$tmp/usr/share/doc/$pkg/copyright" "$MUSIC/$pkg/copyright"
    rm -rf "$tmp"
    touch "$MUSIC/$pkg/.complete"
    echo "[music] $pkg: $(find "$MUSIC/$pkg" -type f \( -name '*.ogg' -o -name '*.mp3' \) | wc -l) tracks in $MUSIC/$pkg"
done
