"""Run diffusers' own `PipelineTesterMixin` (tests/pipelines/test_pipelines_common.py of the diffusers repository)
against `DeblurVideoPipeline` with the tiny components of `vdiffdeblur.pipelines.tiny`, and print the counts.

    python scripts/run_diffusers_mixin.py --diffusers-tests /path/to/diffusers/tests [-k PATTERN] [-v]

`--diffusers-tests` is the `tests/` folder of a local diffusers checkout (of the installed version, or the nearest):
nothing is fetched and nothing is written there. Its test helpers need `parameterized` and `requests-mock`
(diffusers' test extra). This file is also the test module: pytest runs it from a temporary folder with the
checkout's parent on `sys.path`, and `VDIFFDEBLUR_ALLOW_PICKLE=1` set, because the mixin saves `.bin` weights
(`safe_serialization=False`) and loads them back without options. Exit status: 0 when no test failed, 1 when
some did, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path

#: the diffusers tests folder, set by `main` for the pytest run of this file
TESTS_ENV = "VDIFFDEBLUR_DIFFUSERS_TESTS"
#: modules diffusers' test helpers import that the package itself does not need
TEST_DEPENDENCIES = ("parameterized", "requests_mock", "pytest")


def define_case(tests_dir: str | os.PathLike):
    """The `unittest.TestCase` running `PipelineTesterMixin` from the diffusers tests folder `tests_dir`."""
    sys.path.insert(0, str(Path(tests_dir).resolve().parent))
    import torch
    from tests.pipelines.test_pipelines_common import PipelineTesterMixin

    from vdiffdeblur.pipelines import DeblurVideoPipeline
    from vdiffdeblur.pipelines.tiny import tiny_components

    class DeblurVideoPipelineMixinTests(PipelineTesterMixin, unittest.TestCase):
        pipeline_class = DeblurVideoPipeline
        params = frozenset(["video", "guidance_scale"])
        batch_params = frozenset(["video"])
        # a video pipeline's names (diffusers' own video pipelines list num_videos_per_prompt, not _images_)
        required_optional_params = frozenset([
            "num_inference_steps", "num_videos_per_prompt", "generator", "latents", "output_type", "return_dict",
            "callback_on_step_end", "callback_on_step_end_tensor_inputs",
        ])
        # the callback tensors are the conditional branch's: nothing to re-batch when guidance changes
        callback_cfg_params = frozenset()
        test_xformers_attention = False

        def get_dummy_components(self):
            return tiny_components(seed=0)

        def get_dummy_inputs(self, device, seed=0):
            frames = torch.rand((2, 3, 16, 16), generator=torch.Generator(device="cpu").manual_seed(seed))
            return {"video": frames, "generator": torch.Generator(device="cpu").manual_seed(seed),
                    "num_inference_steps": 2, "guidance_scale": 3.0, "output_type": "np"}

    return DeblurVideoPipelineMixinTests


if os.environ.get(TESTS_ENV):
    DeblurVideoPipelineMixinTests = define_case(os.environ[TESTS_ENV])


def count_results(junit_xml: Path) -> dict:
    """passed / failed / skipped counts and the failed tests' names from a pytest JUnit XML report."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "failures": []}
    for case in ET.parse(junit_xml).getroot().iter("testcase"):
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            counts["failed"] += 1
            counts["failures"].append(case.get("name"))
        elif "skipped" in kinds:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--diffusers-tests", required=True, help="the tests/ folder of a local diffusers checkout")
    p.add_argument("-k", default=None, help="run only the mixin tests matching this pytest expression")
    p.add_argument("-v", "--verbose", action="store_true", help="show pytest's report")
    args = p.parse_args(argv)
    tests = Path(args.diffusers_tests)
    common = tests / "pipelines" / "test_pipelines_common.py"
    if not common.is_file():
        print(f"error: {tests}: not a diffusers tests folder (no pipelines/test_pipelines_common.py)", file=sys.stderr)
        return 2
    missing = [m for m in TEST_DEPENDENCIES if importlib.util.find_spec(m) is None]
    if missing:
        print(f"error: diffusers' test helpers need {', '.join(missing)} (pip install parameterized requests-mock "
              "pytest)", file=sys.stderr)
        return 2
    import diffusers

    env = {**os.environ, TESTS_ENV: str(tests.resolve()), "VDIFFDEBLUR_ALLOW_PICKLE": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="diffusers-mixin-") as tmp:
        ini, report = Path(tmp) / "pytest.ini", Path(tmp) / "report.xml"
        ini.write_text("[pytest]\n")
        cmd = [sys.executable, "-m", "pytest", str(Path(__file__).resolve()), "-c", str(ini), "--rootdir", tmp,
               "-p", "no:cacheprovider", f"--junitxml={report}", "-q", "-rfs"]
        if args.k:
            cmd += ["-k", args.k]
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=not args.verbose, text=True)
        if not report.is_file():
            print(proc.stdout or "", proc.stderr or "", file=sys.stderr)
            print("error: pytest wrote no report (see above)", file=sys.stderr)
            return 2
        counts = count_results(report)
    print(f"diffusers {diffusers.__version__}, tests from {tests}: {counts['passed']} passed, {counts['failed']} "
          f"failed, {counts['skipped']} skipped")
    for name in counts["failures"]:
        print(f"FAILED {name}")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
