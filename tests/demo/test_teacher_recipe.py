"""The command a trained demo teacher records reproduces its recipe through the CLI."""

from __future__ import annotations

import shlex

import pytest

from kdstore.demo.teacher_recipe import TeacherRecipe, recipe_command


@pytest.mark.parametrize("recipe", [
    TeacherRecipe(),
    TeacherRecipe(hours=1.0, steps=800, seed=1, config="tiny-teacher-tdt"),
    TeacherRecipe(hours=2.0, seed=3, hold_out_engine="festival"),
])
def test_recorded_command_parses_back_to_the_recipe(recipe):
    from kdstore.cli.commands.demo import command

    words = shlex.split(recipe_command(recipe, "/tmp/run"))
    assert words[:3] == ["kdstore", "demo", "--train-teacher"]
    params = command.make_context("demo", words[2:]).params
    assert params["train_teacher"] and params["workdir"] == "/tmp/run"
    assert params["tdt"] == recipe.config.endswith("-tdt")
    assert (params["teacher_steps"], params["teacher_hours"], params["seed"], params["hold_out_engine"]) == (
        recipe.steps, recipe.hours, recipe.seed, recipe.hold_out_engine)
