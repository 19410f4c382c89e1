"""The GBC answer parsers on realistic answers (in ml-gbc's answer shapes, as real MLLMs write them) and
on malformed ones: each gives what it could read and says why the rest was not used."""

from __future__ import annotations

from captioners.gbc_parse import (
    Phrase,
    parse_composition_answer,
    parse_entity_answer,
    parse_image_answer,
    parse_relation_answer,
)

REAL_IMAGE_ANSWER = """Detailed Caption: The image captures a serene winter scene featuring two horses walking through a
snow-covered field. The horse on the left is light brown, while the horse on the right has a white coat.
In the background, there's a mountain range under a cloudy sky, with bare trees and shrubs.

Top-Level Element Identification:
- [horses][multiple]
- [snow][single]
- [trees][multiple]
- [sky][single]

Concise Formatted Caption: Two [horses][multiple] walk through [snow][single] past bare [trees][multiple]
under a cloudy [sky][single]."""


def test_a_well_formed_image_answer():
    a = parse_image_answer(REAL_IMAGE_ANSWER)
    assert a.problems == []
    assert a.detail.startswith("The image captures a serene winter scene") and "shrubs." in a.detail
    assert a.short == "Two horses walk through snow past bare trees under a cloudy sky."
    assert a.elements == [
        Phrase("horses", True),
        Phrase("snow", False),
        Phrase("trees", True),
        Phrase("sky", False),
    ]


def test_markdown_headers_and_bold_are_read_too():
    answer = "### **Detailed Caption:** A dog on grass.\n**Top-Level Element Identification:**\n- [dog][single]\n"
    answer += "## Concise Formatted Caption: A [dog][single] on [grass][single]."
    a = parse_image_answer(answer)
    assert a.detail == "A dog on grass." and a.short == "A dog on grass."
    assert [p.text for p in a.elements] == ["dog", "grass"]


def test_qualified_phrases_become_one_multiple_phrase():
    answer = (
        "Detailed Caption: A dog and another dog, a cat on the left.\n"
        "Top-Level Element Identification:\n- [Dog 1][single]\n- [dog 2][single]\n- [cat on the left][single]\n"
        "Concise Formatted Caption: A [dog][single] and a [cat][single]."
    )
    a = parse_image_answer(answer)
    assert a.elements == [Phrase("dog", True), Phrase("cat", True)]


def test_unfit_phrases_are_rejected_with_their_reason():
    answer = (
        "Detailed Caption: A red car near the left side, 2 of them, a tree_trunk, a street.\n"
        "Top-Level Element Identification:\n- [left][single]\n- [2][multiple]\n- [tree_trunk][single]\n"
        "- [car][several]\n- [street][single]\n- [bicycle][single]\n"
        "Concise Formatted Caption: A car on a [street][single]."
    )
    a = parse_image_answer(answer)
    assert a.elements == [Phrase("street", False)]
    said = "\n".join(a.problems)
    assert "'left': not a detectable object" in said
    assert "'2': not a detectable object" in said
    assert "'_' is not allowed" in said
    assert "type 'several' is neither single nor multiple" in said
    assert "'bicycle': not in any caption" in said  # named, but no caption says it: no edge text for it


def test_repeated_phrases_are_kept_once():
    answer = (
        "Detailed Caption: A cat.\nTop-Level Element Identification:\n- [cat][single]\n- [cat][single]\n"
        "Concise Formatted Caption: A [cat][single] and the [cat][single] again."
    )
    assert parse_image_answer(answer).elements == [Phrase("cat", False)]


def test_unbalanced_brackets_and_missing_sections_give_a_smaller_answer():
    answer = "Detailed Caption: A [red circle[single] and a [blue star][single].\n"
    a = parse_image_answer(answer)
    assert a.detail.startswith("A [red circle[single]")
    assert a.elements == []  # the elements come from the identification list and the concise caption
    assert "no Concise Formatted Caption section" in a.problems
    assert "no Top-Level Element Identification section" in a.problems
    truncated = parse_image_answer(REAL_IMAGE_ANSWER.replace("[sky][single].", "[sky][sin"))
    assert any("unbalanced brackets" in p for p in truncated.problems)
    assert Phrase("sky", False) in truncated.elements  # from the identification list


def test_garbage_is_one_problem_and_nothing_else():
    a = parse_image_answer("<unk> <unk> ]]] [[ lorem")
    assert (a.detail, a.short, a.elements) == (None, None, [])
    assert len(a.problems) == 1 and a.problems[0].startswith("no section headers at all")
    assert parse_image_answer("").problems[0].startswith("no section headers at all")


def test_entity_answers():
    a = parse_entity_answer(
        "Object Present: Yes\nDetailed Caption: A red car with shiny wheels and a black roof.\n"
        "Prominent Features: Yes\n- wheels: [multiple]\n- roof: [single]\n- [car][single]\n- spoiler: [single]",
        "car",
    )
    assert a.present and a.detail == "A red car with shiny wheels and a black roof."
    assert a.parts == [Phrase("wheels", True), Phrase("roof", False)]  # the car itself is not its part
    assert any("'spoiler': not in any caption" in p for p in a.problems)
    assert not parse_entity_answer("Object Present: No", "car").present
    none = parse_entity_answer("Object Present: Yes\nDetailed Caption: A car.\nProminent Features: No", "car")
    assert none.present and none.parts == [] and none.problems == []


def test_entity_answers_that_are_off_the_form():
    long = parse_entity_answer("Object Present: yes.\nDetailed Caption: " + "word " * 70, "x")
    assert len(long.detail.split()) == 50 and any("cut to 50" in p for p in long.problems)
    unsure = parse_entity_answer("Detailed Caption: A tall tree.", "tree")
    assert unsure.present and "no Object Present: Yes/No line" in unsure.problems
    empty = parse_entity_answer("", "tree")
    assert not empty.present
    listed = parse_entity_answer(
        "Object Present: Yes\nDetailed Caption: A house with a red door.\nProminent Features:\n- [door][single]",
        "house",
    )
    assert listed.parts == [Phrase("door", False)]  # parts listed without the Yes


def test_composition_answers():
    a = parse_composition_answer(
        "Composition: Tree 2 is on the left, while tree 1 stands to the right.\n"
        "General descriptions:\n- Both trees are bare.\n- They share similar heights.\n- Both trees are bare."
    )
    assert a.composition == "Tree 2 is on the left, while tree 1 stands to the right."
    assert a.general == ["Both trees are bare.", "They share similar heights."]
    missing = parse_composition_answer("The trees stand in a row.")
    assert missing.composition is None and missing.problems == ["no Composition section"]


def test_relation_answers():
    elements = ["horse", "snow", "trees"]
    a = parse_relation_answer(
        "- The [horse] is standing in a field covered with [snow].\n"
        "- Trees can be seen behind the horse.\n"
        "- The [horse] is alone.\n"
        "- The horse is standing in a field covered with snow.\n"
        "not a bullet: the horse and the snow",
        elements,
        max_relations=3,
    )
    assert a.relations == [
        ("The horse is standing in a field covered with snow.", ["horse", "snow"]),
        ("Trees can be seen behind the horse.", ["horse", "trees"]),
    ]
    assert any("names fewer than two elements" in p for p in a.problems)
    capped = parse_relation_answer("- horse on snow\n- trees behind horse\n- snow under trees", elements, 2)
    assert len(capped.relations) == 2 and any("kept the first 2" in p for p in capped.problems)
    assert parse_relation_answer("", elements, 3).problems == ["no relation lines"]
