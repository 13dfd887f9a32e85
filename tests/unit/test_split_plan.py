"""Which file goes to which split: flat folders by a hash of seed and path, split folders as is."""

from __future__ import annotations

import random

import pytest

from visionpipe import split_plan as splits

CLASSES = ("cats", "dogs", "owls")


def _names(n_per_class: int, root: str = "photos", start: int = 0) -> list[str]:
    prefix = f"{root}/" if root else ""
    return [
        f"{prefix}{cls}/IMG_{i:04d}.jpg"
        for cls in CLASSES
        for i in range(start, start + n_per_class)
    ]


def _splits(plan: splits.Plan, root: str = "photos") -> dict[str, str]:
    """relative path -> split"""
    return {item.name.removeprefix(f"{root}/"): item.split for item in plan.items}


def test_flat_folder_classes_are_sorted_folder_names_and_every_image_is_planned() -> None:
    names = sorted(_names(40), key=lambda n: n[::-1])  # any listing order
    plan = splits.plan_image_folder(names, None, 0.1, seed=0)
    assert plan.layout == "flat" and plan.classes == list(CLASSES)
    assert sorted(i.name for i in plan.items) == sorted(names) and plan.ignored == []
    assert [i.name for i in plan.items] == names, "items keep the listing's order"
    for item in plan.items:
        assert plan.classes[item.label] == item.name.split("/")[1]
    assert {i.split for i in plan.items} == {"train", "val", "test"}


def test_adding_photos_never_moves_an_earlier_one() -> None:
    before = _splits(splits.plan_image_folder(_names(60), None, 0.1, seed=3))
    more = _names(60) + _names(90, start=60) + [f"photos/bats/{i}.jpg" for i in range(30)]
    random.Random(0).shuffle(more)  # a new listing order too
    after = _splits(splits.plan_image_folder(more, None, 0.1, seed=3))
    assert {path: after[path] for path in before} == before
    assert sum(s == "test" for s in after.values()) > sum(s == "test" for s in before.values())


def test_the_split_depends_on_the_seed_and_the_path_below_the_root_only() -> None:
    a = _splits(splits.plan_image_folder(_names(50), None, 0.1, seed=0))
    unwrapped = _splits(splits.plan_image_folder(_names(50, root=""), None, 0.1, seed=0), "")
    assert a == unwrapped, "zipping the folder itself or its contents gives the same split"
    other_seed = _splits(splits.plan_image_folder(_names(50), None, 0.1, seed=1))
    assert a != other_seed


def test_every_class_is_split_at_the_requested_rates() -> None:
    plan = splits.plan_image_folder(_names(2000), 0.25, 0.2, seed=0)
    for label, cls in enumerate(plan.classes):
        mine = [i.split for i in plan.items if i.label == label]
        test_share = mine.count("test") / len(mine)
        val_share = mine.count("val") / (len(mine) - mine.count("test"))
        # Binomial draws of 2000: 4 standard deviations are about 0.04.
        assert abs(test_share - 0.25) < 0.04, (cls, test_share)
        assert abs(val_share - 0.2) < 0.04, (cls, val_share)


def test_hidden_files_loose_images_and_other_files_are_ignored() -> None:
    extra = [
        "__MACOSX/photos/cats/._IMG_0000.jpg",
        "photos/.DS_Store",
        "photos/cats/.hidden.jpg",
        "photos/cover.jpg",
        "photos/notes.txt",
    ]
    plan = splits.plan_image_folder(_names(5) + extra, None, 0.1, seed=0)
    assert plan.classes == list(CLASSES) and len(plan.items) == 15
    assert sorted(plan.ignored) == sorted(extra)


def test_system_folders_are_ignored_and_jpeg_suffix_variants_are_images() -> None:
    system = [
        "@eaDir/SYNOFILE_THUMB_S.jpg",  # beside the class folders: would become a class
        "photos/cats/@eaDir/IMG_0000.jpg/SYNOFILE_THUMB_M.jpg",  # a photo's thumbnail
        "photos/#recycle/dogs/IMG_0099.jpg",
        "photos/$RECYCLE.BIN/S-1-5-21/x.jpg",
    ]
    jpegs = ["photos/cats/web.jfif", "photos/dogs/old.JPE"]
    plan = splits.plan_image_folder(_names(5) + system + jpegs, None, 0.1, seed=0)
    assert plan.classes == list(CLASSES)
    assert sorted(plan.ignored) == sorted(system)
    assert {i.name for i in plan.items} >= set(jpegs)


def test_images_in_subfolders_of_a_class_belong_to_it() -> None:
    names = [*_names(5), "photos/cats/2019/a.jpg", "photos/cats/2019/trip/b.jpg"]
    plan = splits.plan_image_folder(names, None, 0.1, seed=0)
    labels = {i.name: plan.classes[i.label] for i in plan.items}
    assert labels["photos/cats/2019/a.jpg"] == labels["photos/cats/2019/trip/b.jpg"] == "cats"
    assert plan.warnings == []  # cats/ holds images of its own: its 2019/ is a sub-folder


def test_a_class_named_like_a_held_out_split_is_warned_about() -> None:
    # Unsorted test photos beside the class folders (cat/, dog/, test/*.jpg): a class "test"
    # of cats and dogs. A class of trains beside cars and buses is one.
    unsorted = (
        "class 'test' (beside cat, dog) is named like a held-out split: if its images are"
        " photos of the other classes, it trains a class of them; sort them into the class"
        " folders or move 'test/' out of the source"
    )
    # Nor is a yes/no pair's: documents sorted into invalid/ and valid/.
    pairs = (("invalid", "valid"), ("not_test", "test"))
    for classes, said in (
        (("cat", "dog", "test"), [unsorted]),
        (("bus", "car", "train"), []),
        *((pair, []) for pair in pairs),
    ):
        names = [f"photos/{c}/{i}.jpg" for c in classes for i in range(5)]
        plan = splits.plan_image_folder(names, None, 0.1, seed=0)
        assert (plan.classes, plan.warnings) == (list(classes), said)


def test_a_class_folder_of_class_folders_beside_classes_is_warned_about() -> None:
    names = [f"photos/animals/{sub}/{i}.jpg" for sub in ("cats", "dogs") for i in range(5)]
    names += [f"photos/birds/{i}.jpg" for i in range(5)]
    names += [f"photos/fish/2019/{i}.jpg" for i in range(5)]  # one sub-folder: a class's own
    plan = splits.plan_image_folder(names, None, 0.1, seed=0)
    assert plan.classes == ["animals", "birds", "fish"]
    assert plan.warnings == [
        "the class folder 'photos/animals/' holds no images of its own, only the folders cats/, "
        "dogs/, whose images all train as the one class 'animals' (beside 'photos/birds/', which "
        "holds its own): if they are classes, move them up beside 'birds/'"
    ]
    by_year = [f"photos/{c}/{y}/{i}.jpg" for c in CLASSES for y in (2019, 2020) for i in range(3)]
    assert splits.plan_image_folder(by_year, None, 0.1, seed=0).warnings == []
    # Filed by year in one class, beside a class with photos of its own and a 2019/ too.
    by_year = [f"photos/dogs/{y}/{i}.jpg" for y in (2019, 2020) for i in range(3)]
    by_year += [f"photos/cats/{i}.jpg" for i in range(3)] + ["photos/cats/2019/3.jpg"]
    assert splits.plan_image_folder(by_year, None, 0.1, seed=0).warnings == []
    # Classes filed under years, when a photo of the next year comes in: the years are the
    # only class folders left.
    by_year = [f"photos/2024/{c}/{i}.jpg" for c in ("cats", "dogs") for i in range(3)]
    assert splits.plan_image_folder(by_year, None, 0.1, seed=0).warnings == []
    plan = splits.plan_image_folder([*by_year, "photos/2025/cats/9.jpg"], None, 0.1, seed=0)
    assert plan.classes == ["2024", "2025"]
    assert plan.warnings == [
        "the class folders photos/2024/, photos/2025/ are named by a year and hold folders named"
        " alike in each (cats/): the classes trained are the years. If cats/ and the others are"
        " the classes, file the photos by class first (photos/cats/2024/), or point data.source"
        " at one year's folder"
    ]
    # Filed by date in one class only: folders named by a year are no classes.
    for dated in (("2019", "2020"), ("2019-06-01 Paris", "Photos from 2020")):
        by_year = [f"photos/dogs/{d}/{i}.jpg" for d in dated for i in range(3)]
        by_year += [f"photos/cats/{i}.jpg" for i in range(3)]
        assert splits.plan_image_folder(by_year, None, 0.1, seed=0).warnings == []


def test_a_class_folder_of_class_folders_in_split_folders_is_warned_about_too() -> None:
    names = [
        f"ds/{split}/{path}/{i}.jpg"
        for split in ("train", "test")
        for path in ("animals/cats", "animals/dogs", "birds", "fish/2019")
        for i in range(5)
    ]
    plan = splits.plan_image_folder(names, None, 0.1, seed=0)
    assert plan.layout == "split folders" and plan.classes == ["animals", "birds", "fish"]
    assert plan.warnings == [
        "the class folder 'ds/train/animals/' holds no images of its own, only the folders "
        "cats/, dogs/, whose images all train as the one class 'animals' (beside "
        "'ds/train/birds/', which holds its own): if they are classes, move them up beside "
        "'birds/', in test/ too"
    ]


def test_split_folders_keep_their_own_test_split_and_refuse_a_test_fraction() -> None:
    names = [
        f"ds/{split}/{cls}/{i}.png"
        for split in ("train", "val")
        for cls in CLASSES
        for i in range(10)
    ]
    plan = splits.plan_image_folder(names, None, 0.2, seed=0)
    assert plan.layout == "split folders" and plan.test_split_source == "val"
    assert [i.split == "test" for i in plan.items] == ["/val/" in n for n in names]
    assert sum(i.split == "val" for i in plan.items) == 6  # 0.2 of the 30 train images
    with pytest.raises(splits.DatasetLayoutError, match=r"test_fraction=0\.3 applies to flat"):
        splits.plan_image_folder(names, 0.3, 0.2, seed=0)


def test_split_folders_with_test_and_val_use_both_as_they_are() -> None:
    names = [
        f"ds/{s}/{cls}/{i}.png"
        for s in ("train", "val", "test")
        for cls in CLASSES
        for i in range(4)
    ]
    plan = splits.plan_image_folder(names, None, 0.2, seed=0)
    assert plan.layout == "split folders" and plan.ignored == []
    assert [i.split for i in plan.items] == [n.split("/")[1] for n in names]


def test_a_held_out_class_named_as_a_train_class_but_for_case_is_said_so() -> None:
    names = ["train/cat/1.jpg", "train/dog/1.jpg", "test/Cat/1.jpg", "test/owl/1.jpg"]
    with pytest.raises(splits.DatasetLayoutError) as err:
        splits.plan_image_folder(names, None, 0.2, seed=0)
    assert str(err.value) == (
        "test/ has classes not in train/: Cat (train/ has 'cat': rename one), owl"
        " (train/'s are cat, dog)"
    )


def test_split_folders_class_sub_folders_belong_to_the_class() -> None:
    names = [
        f"{s}/{cls}/{sub}/{i}.jpg"
        for s in ("train", "test")
        for cls in CLASSES
        for sub in ("indoor", "outdoor")
        for i in range(3)
    ]
    plan = splits.plan_image_folder(names, None, 0.1, seed=0)
    assert plan.layout == "split folders" and plan.classes == list(CLASSES)
    assert [plan.classes[i.label] for i in plan.items] == [n.split("/")[1] for n in names]
    assert [i.split == "test" for i in plan.items] == [n.startswith("test/") for n in names]


@pytest.mark.parametrize("folders", [("Train", "Test"), ("training", "validation")])
def test_split_folders_misnamed_are_refused_not_taken_for_classes(folders: tuple[str, str]) -> None:
    names = [f"photos/{f}/{cls}/{i}.jpg" for f in folders for cls in CLASSES for i in range(3)]
    with pytest.raises(splits.DatasetLayoutError, match="class folders found are split folders"):
        splits.plan_image_folder(names, None, 0.1, seed=0)
    # Kaggle's cats and dogs: unlabelled train/*.jpg and test1/*.jpg, no class folders.
    with pytest.raises(splits.DatasetLayoutError, match="split folders \\(test1, train\\)"):
        splits.plan_image_folder(["train/cat.0.jpg", "test1/1.jpg"], None, 0.1, seed=0)
    trains = splits.plan_image_folder(["trains/1.jpg", "test/2.jpg"], None, 0.1, seed=0)
    assert trains.classes == ["test", "trains"]  # a real class beside one looks like a split


def test_held_out_folders_without_train_say_train_is_missing() -> None:
    names = [
        f"photos/{f}/{cls}/{i}.jpg" for f in ("val", "test") for cls in CLASSES for i in range(3)
    ]
    with pytest.raises(splits.DatasetLayoutError) as err:
        splits.plan_image_folder(names, None, 0.1, seed=0)
    assert "the source holds test/ and val/ but no train/ beside them" in str(err.value)


@pytest.mark.parametrize(
    ("folders", "rename"),
    [
        (("train", "valid", "test"), "valid/'.*rename it to 'val/'"),  # Roboflow's export
        (("train", "Val", "test"), "Val/'.*rename it to 'val/'"),
        (("train", "validation"), "validation/'.*rename it to 'val/'"),
        (("train", "val", "testing"), "testing/'.*rename it to 'test/'"),
        (("train", "Test", "test"), "Test/'.*merge its class folders into 'test/'"),
    ],
)
def test_a_misnamed_split_folder_beside_train_is_refused_not_left_out(
    folders: tuple[str, ...], rename: str
) -> None:
    names = [f"ds/{f}/{cls}/{i}.jpg" for f in folders for cls in CLASSES for i in range(3)]
    with pytest.raises(splits.DatasetLayoutError, match=f"found 'ds/{rename}"):
        splits.plan_image_folder(names, None, 0.1, seed=0)
    # Any other folder beside the splits is left out, listed with the ignored files.
    names = [n.replace(f"/{folders[1]}/", "/extra/") for n in names]
    if folders[2:]:
        names = [n.replace(f"/{folders[2]}/", "/test/") for n in names]
        plan = splits.plan_image_folder(names, None, 0.1, seed=0)
        assert plan.ignored == [n for n in names if "/extra/" in n]


@pytest.mark.parametrize("split", ["test", "val", "Validation"])
def test_a_split_folder_of_classes_beside_the_class_folders_is_refused(split: str) -> None:
    names = _names(5) + [f"photos/{split}/{cls}/{i}.jpg" for cls in CLASSES[:2] for i in range(3)]
    with pytest.raises(splits.DatasetLayoutError) as err:
        splits.plan_image_folder(names, None, 0.1, seed=0)
    assert f"'photos/{split}/' holds the class folders cats, dogs found beside it" in str(err.value)
    assert "move the class folders beside it into 'photos/train/'" in str(err.value)
    # A class named like a split, with sub-folders of its own, stays a class.
    names = _names(5) + [f"photos/{split}/2024/{i}.jpg" for i in range(3)]
    plan = splits.plan_image_folder(names, None, 0.1, seed=0)
    assert plan.classes == sorted([*CLASSES, split])


def test_a_source_without_images_says_what_it_holds() -> None:
    with pytest.raises(splits.DatasetLayoutError) as err:
        splits.plan_image_folder(["photos.zip", "__MACOSX/._photos.zip"], None, 0.1, seed=0)
    assert "among the 2 files of the source (photos.zip, __MACOSX/._photos.zip)" in str(err.value)
    assert "archives inside the source are not opened: unpack them" in str(err.value)


def test_thin_classes_are_named() -> None:
    counts = {"train": {"cats": 40, "dogs": 3}, "test": {"cats": 10, "dogs": 0}}
    # Those with none come first, a log cut to its first lines showing them.
    assert splits.thin_classes(counts, ["train", "test"]) == [
        "class 'dogs' has no test images",
        "class 'dogs' has only 3 train images",
    ]
    # A right-to-left override in a name would turn the rest of the terminal line around.
    [line] = splits.thin_classes({"train": {"rtl \u202eevil": 1}}, ["train"])
    assert line == "class 'rtl \\u202eevil' has only 1 train image"


@pytest.mark.parametrize("name", ["new\nline", "tab\there"])
def test_a_class_folder_named_with_a_control_character_is_refused(name: str) -> None:
    names = [f"photos/{c}/{i}.jpg" for c in ("cats", name) for i in range(5)]
    with pytest.raises(splits.DatasetLayoutError) as err:
        splits.plan_image_folder(names, None, 0.1, seed=0)
    assert f"the class folder {name!r} has a control character in its name" in str(err.value)
    assert "\n" not in str(err.value) and "\t" not in str(err.value)  # one line, as named


@pytest.mark.parametrize(
    ("names", "message"),
    [
        # Kaggle's dogs vs cats: labels in the file names, unlabelled test1/.
        (
            [*(f"train/{c}.{i}.jpg" for c in ("cat", "dog") for i in range(3)), "test1/1.jpg"],
            r"split folders \(test1, train\).*6 in 'train': cat\.0\.jpg, cat\.1\.jpg \.\.\.",
        ),
        (["train/cat.0.jpg", "train/dog.0.jpg"], r"one class folder, 'train'.*file name"),
        (["Abyssinian_1.jpg", "beagle_1.jpg"], r"0 class folders.*2 in '\.': Abyssinian_1"),
    ],
)
def test_images_labelled_in_file_names_are_refused_saying_names_are_not_read(
    names: list[str], message: str
) -> None:
    with pytest.raises(splits.DatasetLayoutError, match=message) as raised:
        splits.plan_image_folder(names, None, 0.1, seed=0)
    assert "'Labels in file names'" in str(raised.value)


def _pets(folders: tuple[str, str]) -> list[str]:
    """Oxford-IIIT pets as downloaded: breeds in the file names, masks under annotations/."""
    return [
        f"pets/{folder}/{breed}_{i}.jpg"
        for breed in ("Abyssinian", "beagle")
        for i in range(3)
        for folder in folders
    ]


def test_data_folders_of_a_download_are_refused_as_classes() -> None:
    for names in (
        _pets(("images", "annotations/trimaps")),
        [
            f"VOC/{d}/2007_{i:06d}.png"
            for i in range(3)
            for d in ("JPEGImages", "SegmentationClass")
        ],
    ):
        with pytest.raises(splits.DatasetLayoutError, match=r"named like a dataset's folder"):
            splits.plan_image_folder(names, None, 0.1, seed=0)
    sorted_pets = splits.plan_image_folder(_pets(("cats", "dogs/2024")), None, 0.1, seed=0)
    assert sorted_pets.classes == ["cats", "dogs"]


def test_data_folders_in_split_folders_are_refused_as_classes() -> None:
    """A segmentation set as Kaggle ships it, train/images/ + train/masks/ beside val/, would
    train photos against their masks at a perfect score."""
    names = [
        f"seg/{s}/{d}/{i}.png"
        for s in ("train", "val")
        for d in ("images", "masks")
        for i in range(3)
    ]
    with pytest.raises(splits.DatasetLayoutError, match=r"seg/train/images/, seg/train/masks/"):
        splits.plan_image_folder(names, None, 0.1, seed=0)
    names = [n.replace("masks", "documents") for n in names]
    assert splits.plan_image_folder(names, None, 0.1, seed=0).classes == ["documents", "images"]


def test_one_class_named_like_a_data_folder_is_a_class() -> None:
    """documents/ beside images/ (a classifier of scans and photos), or Masks/ beside
    no_mask/: one such name among classes is the user's own; a segmentation download's images/
    beside masks/ is refused."""
    for classes in (("documents", "images"), ("Masks", "no_mask"), ("annotations", "photos")):
        plan = splits.plan_image_folder(_pets(classes), None, 0.1, seed=0)
        assert plan.classes == sorted(classes)
    with pytest.raises(splits.DatasetLayoutError, match=r"include images/, masks/, named like"):
        splits.plan_image_folder(_pets(("images", "masks")), None, 0.1, seed=0)
    with pytest.raises(splits.DatasetLayoutError, match=r"include GT/, imgs/, named like"):
        splits.plan_image_folder(_pets(("imgs", "GT")), None, 0.1, seed=0)
