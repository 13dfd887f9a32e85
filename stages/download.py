"""Stage download: fetch and verify the dataset archive into data/raw/."""

import os
from pathlib import Path

from visionpipe import logs


def main() -> None:
    # Imported here, inside run_stage: a Ctrl-C while they load is its one line, not a traceback.
    from visionpipe import config, paths, sources
    from visionpipe.config.compose import check_against_conf
    from visionpipe.config.data import DataConfig
    from visionpipe.config.launch import LaunchConfig
    from visionpipe.fsutil import write_json

    check_against_conf(data_stage=True)
    data = config.load_section("data", DataConfig)
    # Where this machine keeps its data is a launch setting, read here but not declared in
    # dvc.yaml: clones with the same archive in different folders write the same dvc.lock.
    data_root = config.load_section("launch", LaunchConfig).data_root
    root = Path.cwd() / data_root if data_root else None
    env_mirror = os.environ.get("DATA_MIRROR")
    result = sources.fetch_dataset(
        data.dataset,
        data.source,
        data.sha256,
        paths.RAW_DIR,
        base_dir=root or Path.cwd(),
        mirror=env_mirror or (str(root) if root else None),
        mirror_name="DATA_MIRROR" if env_mirror else "launch.data_root",
    )
    info = {"dataset": data.dataset, "file": result.path.name, "sha256": result.sha256}
    write_json(paths.RAW_INFO, {**info, "md5": result.md5, "bytes": result.size})


if __name__ == "__main__":
    logs.run_stage(main)
