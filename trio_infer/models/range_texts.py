"""The texts that int8/uint8 ranges are computed from: 400 varied texts that ship with the package.

`int8` and `uint8` vectors map each dimension's range onto 256 buckets, so they need every
dimension's minimum and maximum over typical inputs. These texts stand in for those inputs: written
sentences from many domains (science, law, medicine, cooking, code, finance, travel, sport, support
tickets, a few in other languages), questions as a search box gets them, and passages of two to
four sentences. Deterministic (a fixed list and a seeded shuffle), so every machine computes the
same ranges for the same model; nothing is downloaded.
"""

from __future__ import annotations

import random

# Bump when the texts change: cached ranges are keyed by it.
VERSION = 1
COUNT = 400

_SENTENCES = """
The mitochondria produce most of the chemical energy needed to power a cell's biochemical reactions.
Photosynthesis converts light energy into chemical energy stored in glucose.
A black hole forms when a massive star collapses under its own gravity at the end of its life.
The speed of light in a vacuum is about 299,792 kilometres per second.
Plate tectonics explains why earthquakes cluster along the boundaries of continents.
Vaccines train the immune system to recognise a pathogen without causing the disease.
Type 2 diabetes is managed with diet, exercise and, when needed, medication such as metformin.
Patients should fast for eight hours before the blood test.
The tenant must give the landlord thirty days' written notice before moving out.
A contract is void if one of the parties lacked the legal capacity to agree to it.
The court ruled that the evidence had been obtained without a valid warrant.
Preheat the oven to 180 degrees and grease a round cake tin.
Whisk the eggs with the sugar until the mixture is pale and doubles in volume.
Simmer the tomato sauce for twenty minutes, stirring now and then, and season with salt.
To reverse a list in Python, call list.reverse() or use the slice items[::-1].
The function raises a KeyError when the dictionary has no such key.
Use a database index on the columns your queries filter by most often.
The Kubernetes pod restarts because its liveness probe times out under load.
git rebase rewrites the commits of a branch on top of another base commit.
A 404 status code means the server could not find the requested resource.
The central bank raised interest rates by a quarter of a percentage point to curb inflation.
Diversifying a portfolio across asset classes reduces its overall risk.
Quarterly revenue grew 12 percent year over year, driven by subscription sales.
The invoice is due within 30 days of the delivery date.
Our flight to Lisbon was delayed by three hours because of fog.
The hotel is a ten-minute walk from the old town and the train station.
Travellers from outside the EU need a valid passport and may need a visa.
The striker scored twice in the second half to win the match 3-1.
She finished the marathon in under three hours despite the heat.
The tournament final will be played at the national stadium on Sunday.
I was charged twice for the same order, please refund the duplicate payment.
My package shows as delivered but it never arrived at my door.
How do I reset my password if I no longer have access to my email?
The app crashes every time I try to upload a photo from my gallery.
The French Revolution began in 1789 with the storming of the Bastille.
The Roman Empire split into eastern and western halves in the fourth century.
The printing press made books cheaper and spread literacy across Europe.
Shakespeare wrote Hamlet around the year 1600.
The novel follows a young woman who leaves her village to study medicine in the city.
Jazz grew out of blues and ragtime in New Orleans in the early twentieth century.
The orchestra will perform Beethoven's ninth symphony next month.
Regular exercise lowers blood pressure and improves sleep.
Drink plenty of water and rest if you have a mild fever.
The new vaccine was approved after trials in more than forty thousand volunteers.
Solar panels convert sunlight into electricity without moving parts.
Wind farms supplied a fifth of the country's electricity last year.
Electric cars are cheaper to run but still cost more to buy than petrol cars.
The river floods every spring when the snow in the mountains melts.
Deforestation threatens the habitat of many species in the rainforest.
Coral reefs are bleaching as ocean temperatures rise.
Transformers use self-attention to weigh every token of the input against every other.
An embedding maps a text to a vector so that similar texts lie close together.
Cosine similarity measures the angle between two vectors, ignoring their length.
The model was fine-tuned on question and answer pairs from a support forum.
Retrieval-augmented generation looks up relevant passages before answering a question.
Please find attached the signed agreement and the updated schedule.
The meeting is moved to Thursday at 10 am in the small conference room.
Thank you for your application; we will get back to you within two weeks.
Le train pour Paris part à huit heures du matin.
Der Vertrag kann mit einer Frist von drei Monaten gekündigt werden.
El museo está cerrado los lunes y abre a las diez los demás días.
東京は日本の首都で、世界有数の大都市です。
Il ristorante serve piatti tipici della cucina toscana.
A mortgage is a loan secured by the property it pays for.
Compound interest means that interest is earned on previously earned interest.
The warranty covers manufacturing defects for two years but not accidental damage.
Return the item in its original packaging within 14 days for a full refund.
The battery lasts about ten hours of video playback on a single charge.
This laptop has 16 GB of memory, a 512 GB SSD and a 14-inch screen.
The telescope captured images of galaxies more than 13 billion light years away.
Water boils at a lower temperature at high altitude because the air pressure is lower.
The children built a sandcastle and watched the tide wash it away.
My grandmother grows tomatoes, beans and herbs in her small garden.
The city council approved a new bike lane along the main road.
Voters will elect a new parliament in the spring.
The bill passed the senate by a narrow margin after a long debate.
Unemployment fell to its lowest level in a decade.
The recipe serves four and takes about forty minutes.
Keep the dough in the fridge overnight so the flavours develop.
"""

_QUESTIONS = """
what is the capital of australia
how to cook rice without a rice cooker
symptoms of vitamin d deficiency
best way to learn a new language as an adult
why is the sky blue
python read csv file into list
difference between tcp and udp
how long does a passport renewal take
cheap flights from london to rome in may
what does a high resting heart rate mean
how to remove a stripped screw
tenant rights when the landlord does not return the deposit
who painted the mona lisa
how many calories in a banana
kubernetes pod stuck in pending state
when was the eiffel tower built
how do vaccines work
is coffee bad for your health
how to calculate compound interest
what is retrieval augmented generation
"""


def range_texts(count: int = COUNT, seed: int = 1234) -> list[str]:
    """`count` texts: every sentence and question alone, then passages of 2-4 sentences, then
    more lone sentences and questions, in a fixed shuffled order. Same arguments, same texts."""
    sentences = [line.strip() for line in _SENTENCES.strip().splitlines() if line.strip()]
    questions = [line.strip() for line in _QUESTIONS.strip().splitlines() if line.strip()]
    rng = random.Random(seed)
    texts = [*sentences, *questions]
    while len(texts) < count:
        if rng.random() < 0.6:
            texts.append(" ".join(rng.sample(sentences, rng.randint(2, 4))))
        else:
            # A query made of a sentence's first words, as a search box gets them.
            words = rng.choice(sentences).rstrip(".?!").split()
            texts.append(" ".join(words[: rng.randint(2, 6)]).lower())
    texts = texts[:count]
    rng.shuffle(texts)
    return texts


__all__ = ["COUNT", "VERSION", "range_texts"]
