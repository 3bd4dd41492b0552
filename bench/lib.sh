# Helpers shared by the benchmark scripts (sourced, from the repository's root).

# The pids of every process whose working directory is DIR (a postmaster and its children).
pids_in() {
    local dir=$1 p
    for p in /proc/[0-9]*; do
        if [ "$(readlink "$p/cwd" 2>/dev/null)" = "$dir" ]; then echo "${p#/proc/}"; fi
    done
    return 0
}
