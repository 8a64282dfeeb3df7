"""Conversation topics and the seed user lines the job plays from."""

from __future__ import annotations

TOPICS: dict[str, dict[str, list[str]]] = {
    "work stress": {
        "openers": [
            "My manager keeps piling on work and I honestly can't keep up anymore.",
            "I have a huge deadline on Friday and I'm panicking a bit.",
            "Work has been so intense lately that I can't switch off in the evenings.",
        ],
        "followups": [
            "I just feel like if I say no, they'll think I'm not good enough.",
            "Even on weekends I keep checking my email.",
            "Maybe I should talk to someone at work about it, but I don't know who.",
        ],
    },
    "personal growth": {
        "openers": [
            "I want to become a more confident person but I don't know where to start.",
            "Lately I've been thinking a lot about who I actually want to be.",
            "I keep starting self-improvement plans and dropping them after a week.",
        ],
        "followups": [
            "I guess I compare myself to other people way too much.",
            "Small steps sound nice, but they feel so slow.",
            "What if I try and it turns out I can't really change?",
        ],
    },
    "learning to code": {
        "openers": [
            "I started learning Python last month and I already feel stuck.",
            "Everyone says coding is easy to pick up, but I keep getting lost in tutorials.",
            "I want to switch careers into software, but I'm scared I'm too old for it.",
        ],
        "followups": [
            "When I see an error message my mind just goes blank.",
            "I understand the examples, but I can't build anything on my own.",
            "Maybe I should pick a small project, like a to-do app?",
        ],
    },
    "time management": {
        "openers": [
            "I never seem to have enough time for the things that matter to me.",
            "I spend my whole day busy but at the end I feel like I did nothing.",
            "I keep procrastinating on everything, even the stuff I enjoy.",
        ],
        "followups": [
            "I've tried to-do lists, but they just get longer and longer.",
            "Mornings are the worst, I waste so much time on my phone.",
            "Maybe I'm just trying to do too many things at once.",
        ],
    },
    "relationships": {
        "openers": [
            "My best friend and I had a fight and we haven't talked in a week.",
            "I feel like my partner and I don't really listen to each other anymore.",
            "I moved to a new city and I find it really hard to make friends.",
        ],
        "followups": [
            "I want to reach out, but I don't know what to say first.",
            "Part of me thinks it was my fault, honestly.",
            "I'm worried they'll just brush me off.",
        ],
    },
    "wellbeing": {
        "openers": [
            "I haven't been sleeping well and it's starting to affect everything.",
            "I feel tired all the time, even after a long weekend.",
            "I want to take better care of myself but I never find the energy.",
        ],
        "followups": [
            "I know I should exercise more, but it feels like a chore.",
            "Sometimes I just feel kind of flat, you know?",
            "Maybe a short walk every day would be a start.",
        ],
    },
}
GENERIC_FOLLOWUPS = [
    "Thanks, that actually helps a bit.",
    "Hmm, I hadn't thought about it that way.",
    "Okay... but what should I do first?",
]
