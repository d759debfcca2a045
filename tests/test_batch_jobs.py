"""Reading and validating a batch's jobs: CSV and JSON Lines files, --contents/--styles,
and the one line a bad row gets (its file, line and what is wrong)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import ConfigError, TransferConfig, preset_config
from engine.batch.jobs import cross_jobs, read_jobs


def _png(path: Path, value: int = 0) -> Path:
    Image.fromarray(np.full((20, 30, 3), value, np.uint8)).save(path)
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    for name, value in [("cat.png", 10), ("dog.png", 20), ("starry.png", 30), ("wave.png", 40)]:
        _png(tmp_path / name, value)
    return tmp_path


def _csv(folder: Path, text: str) -> Path:
    path = folder / "jobs.csv"
    path.write_text(text)
    return path


def test_csv_rows_become_jobs_with_configs_outputs_and_paths_relative_to_the_file(folder):
    path = _csv(folder, "content,style,output,size,iterations,style_weights,preset,clip-pixels\n"
                        "cat.png,starry.png,,64,2,,,\n"
                        'dog.png,"starry.png,wave.png",sub/dog.jpg,32,,,,true\n'
                        "dog.png,wave.png,,,,\"1,2,3,4,5\",starry_tubingen,\n")
    jobs = read_jobs(path, folder / "out")
    assert [job.line for job in jobs] == [2, 3, 4]
    assert jobs[0].content == folder / "cat.png" and jobs[0].styles == (folder / "starry.png",)
    assert jobs[0].output == folder / "out" / "cat_starry.png" and jobs[0].name == "cat_starry.png"
    assert jobs[0].config == TransferConfig(size=64, iterations=2)
    assert jobs[1].styles == (folder / "starry.png", folder / "wave.png")
    assert jobs[1].output == folder / "out" / "sub" / "dog.jpg" and jobs[1].name == "sub/dog.jpg"
    assert jobs[1].config == TransferConfig(size=32, clip_pixels=True)
    assert jobs[2].config == preset_config("starry_tubingen", style_weights=(1, 2, 3, 4, 5))


def test_json_lines_take_json_values(folder):
    path = folder / "jobs.jsonl"
    path.write_text(json.dumps({"content": "cat.png", "style": ["starry.png", "wave.png"], "style_blend": [0.7, 0.3],
                                "size": 48, "init": "content"}) + "\n\n"
                    + json.dumps({"content": str(folder / "dog.png"), "style": "wave.png", "output": "d.png"}) + "\n")
    jobs = read_jobs(path, folder / "out")
    assert [job.line for job in jobs] == [1, 3]
    assert jobs[0].config == TransferConfig(size=48, init="content", style_blend=(0.7, 0.3))
    assert jobs[1].content == folder / "dog.png" and jobs[1].output == folder / "out" / "d.png"


@pytest.mark.parametrize("rows, line, words", [
    ("cat.png,starry.png,64\nnope.png,starry.png,64\n", 3, ["content image", "nope.png", "does not exist"]),
    ("cat.png,starry.png,64\ncat.png,starry.png,big\n", 3, ["size must be a whole number, got 'big'"]),
    ("cat.png,starry.png,8\n", 2, ["size must be at least 16"]),
    ("cat.png,,64\n", 2, ["no style image"]),
    ("cat.png,starry.png,64\ndog.png,starry.png,64,extra\n", 3, ["more cells than the header"]),
    ("cat.png,starry.png,64\ncat.png,starry.png,32\n", 3, ["cat_starry.png", "also the output of line 2"]),
    ("cat.png,jobs.csv,64\n", 2, ["style image", "not an image"]),
])
def test_a_bad_row_is_refused_with_its_line_and_what_is_wrong(folder, rows, line, words):
    path = _csv(folder, "content,style,size\n" + rows)
    with pytest.raises(ConfigError) as error:
        read_jobs(path, folder / "out")
    message = str(error.value)
    assert message.startswith(f"{path}:{line}: "), message
    for word in words:
        assert word in message


def test_unknown_columns_and_bad_json_name_their_line(folder):
    with pytest.raises(ConfigError, match=r"jobs.csv:2: unknown key 'colour'"):
        read_jobs(_csv(folder, "content,style,colour\ncat.png,wave.png,red\n"), folder)
    path = folder / "jobs.jsonl"
    path.write_text('{"content": "cat.png", "style": "wave.png"}\n{"content": "cat.png",\n')
    with pytest.raises(ConfigError, match=r"jobs.jsonl:2: not valid JSON"):
        read_jobs(path, folder)
    path.write_text('["cat.png", "wave.png"]\n')
    with pytest.raises(ConfigError, match=r"jobs.jsonl:1: a job is a JSON object"):
        read_jobs(path, folder)


@pytest.mark.parametrize("header, rows, line, words", [
    # An output, or any file its run writes, that is an input of the batch (content, style, init).
    ("content,style,output", "cat.png,wave.png,{folder}/dog.png\ndog.png,wave.png,\n", 2,
     ["its output", "dog.png would overwrite the content image of", "jobs.csv:3", "never overwritten"]),
    ("content,style,output,init", "cat.png,wave.png,mine.jpg,\ncat.png,wave.png,b.png,out/mine.jpg\n", 2,
     ["its output", "would overwrite the init image of", "jobs.csv:3"]),
    ("content,style,output,iterations", "cat.png,wave.png,a.png,2\nout/a_at_iteration_2.png,wave.png,b.png,1\n", 2,
     ["its snapshot 2", "a_at_iteration_2.png would overwrite the content image of", "jobs.csv:3"]),
    # Two jobs' files, or a job's and the batch's own.
    ("content,style,output", "cat.png,wave.png,x.png\ndog.png,wave.png,x.jpg\n", 3,
     ["its run record", "x.json is also the run record of", "jobs.csv:2", "an output name of its own"]),
    ("content,style,output", "cat.png,wave.png,batch.png\n", 2,
     ["its run record", "batch.json is also the batch's state file"]),
    ("content,style,output,sheet", "cat.png,wave.png,a_sheet.png,\ndog.png,wave.png,a.png,true\n", 3,
     ["its sheet file", "a_sheet.png is also the output of", "jobs.csv:2"]),
])
def test_a_job_that_would_write_an_input_or_another_jobs_file_is_refused(folder, header, rows, line, words):
    (folder / "out").mkdir()
    _png(folder / "out" / "mine.jpg", 50)
    _png(folder / "out" / "a_at_iteration_2.png", 60)
    path = _csv(folder, header + "\n" + rows.format(folder=folder))
    with pytest.raises(ConfigError) as error:
        read_jobs(path, folder / "out")
    message = str(error.value)
    assert message.startswith(f"{path}:{line}: its "), message
    for word in words:
        assert word in message, message


def test_only_the_files_a_job_asks_for_count(folder):
    """No sheet, GIF, plot or tile preview asked for, no snapshot at that iteration: no clash."""
    path = _csv(folder, "content,style,output,save_every,iterations\n"
                        "cat.png,wave.png,a.png,2,3\n"
                        "dog.png,wave.png,a_sheet.png,,\n"
                        "dog.png,wave.png,a_at_iteration_1.png,,\n"
                        "dog.png,wave.png,a_at_iteration_3.png,,\n")
    assert len(read_jobs(path, folder / "out")) == 4
    _csv(folder, "content,style,output,save_every,iterations\ncat.png,wave.png,a.png,2,3\n"
                 "dog.png,wave.png,a_at_iteration_2.png,,\n")
    with pytest.raises(ConfigError, match="jobs.csv:3: its output .*a_at_iteration_2.png is also the snapshot 2 of"):
        read_jobs(path, folder / "out")


def test_mask_paths_are_relative_to_the_jobs_file_as_the_images_are(folder):
    path = folder / "jobs.jsonl"
    path.write_text(json.dumps({"content": "cat.png", "style": "wave.png,starry.png",
                                "content_masks": "dog.png,starry.png", "style_masks": ["starry.png", "dog.png"]}) + "\n")
    job = read_jobs(path, folder / "out")[0]
    assert job.config.content_masks == (str(folder / "dog.png"), str(folder / "starry.png"))
    assert job.config.style_masks == (str(folder / "starry.png"), str(folder / "dog.png"))
    path.write_text(json.dumps({"content": "cat.png", "style": "wave.png", "content_masks": "gone.png"}) + "\n")
    with pytest.raises(ConfigError, match=r"jobs.jsonl:1: content mask image '.*gone.png' does not exist"):
        read_jobs(path, folder / "out")


def test_settings_a_run_would_refuse_are_refused_before_the_batch(folder):
    """As nst stylize refuses them before any work: not after the jobs before them ran."""
    for rows, line, words in [("cat.png,starry.png,64,,\ncat.png,wave.png,16,,\n", 3,
                               "too small for the deepest chosen layer"),
                              ('cat.png,starry.png,128,2,"1,1,1"\n', 2, "3 scale iteration counts for 2 scales")]:
        path = _csv(folder, "content,style,size,scales,scale_iterations\n" + rows)
        with pytest.raises(ConfigError, match=words) as error:
            read_jobs(path, folder / "out")
        assert str(error.value).startswith(f"{path}:{line}: "), str(error.value)


def test_missing_or_empty_jobs_files_are_refused(folder):
    with pytest.raises(ConfigError, match="does not exist"):
        read_jobs(folder / "none.csv", folder)
    with pytest.raises(ConfigError, match="holds no jobs"):
        read_jobs(_csv(folder, "content,style\n"), folder)


def test_contents_and_styles_folders_or_globs_give_every_pair(folder, tmp_path):
    (folder / "styles").mkdir()
    for name in ("starry.png", "wave.png"):
        (folder / name).rename(folder / "styles" / name)
    jobs = cross_jobs(str(folder / "*.png"), folder / "styles", folder / "out", {"size": 32})
    assert [(job.content.name, job.styles[0].name) for job in jobs] == [
        ("cat.png", "starry.png"), ("cat.png", "wave.png"), ("dog.png", "starry.png"), ("dog.png", "wave.png")]
    assert {job.name for job in jobs} == {"cat_starry.png", "cat_wave.png", "dog_starry.png", "dog_wave.png"}
    assert all(job.config.size == 32 for job in jobs)
    with pytest.raises(ConfigError, match="--styles .* matches no image"):
        cross_jobs(folder / "*.png", folder / "nothing", folder / "out")


def test_the_key_changes_with_the_config_and_the_input_bytes_only(folder):
    path = _csv(folder, "content,style,size\ncat.png,wave.png,32\n")
    first = read_jobs(path, folder / "out")[0].key()
    assert read_jobs(path, folder / "elsewhere")[0].key() == first
    _csv(folder, "content,style,size\ncat.png,wave.png,48\n")
    assert read_jobs(path, folder / "out")[0].key() != first
    _csv(folder, "content,style,size\ncat.png,wave.png,32\n")
    _png(folder / "cat.png", 11)
    assert read_jobs(path, folder / "out")[0].key() != first
