import pytest

from hellodd.classnames import imagenet_classes, imagenet_table, readable_names


def test_imagenet_table_is_complete_and_ordered():
    table = imagenet_table()
    assert len(table) == 1000 and list(table) == sorted(table)
    assert table["n01440764"] == "tench" and table["n15075141"] == "toilet paper"
    assert imagenet_classes()[0] == "tench"


@pytest.mark.parametrize(
    "folders, expected",
    [
        (["n01440764", "n01443537"], ["tench", "goldfish"]),
        ([f"{i:05d}" for i in range(1000)][:2], ["00000", "00001"]),  # numeric but not the whole ImageNet
        (["ankle_boot", "T-shirt"], ["ankle boot", "T shirt"]),
        (["/a/airfield", "/b/bakery/shop"], ["airfield", "bakery shop"]),
    ],
)
def test_readable_names(folders, expected):
    assert readable_names(folders) == expected


def test_rded_numeric_layout_maps_to_imagenet():
    names = readable_names([f"{i:05d}" for i in range(1000)])
    assert names[0] == "tench" and len(names) == 1000
